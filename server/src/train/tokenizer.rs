//! A WordPiece tokenizer trained on the training texts only, with BERT normalisation (cased) and a
//! `[CLS] $A [SEP]` post-processor; and the encoding helpers the trainer uses.

use anyhow::{anyhow, Result};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, InputSequence, Tokenizer, TokenizerBuilder};

/// Special tokens, in id order: `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.
pub const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
pub const PAD: u32 = 0;
pub const CLS: u32 = 2;
pub const SEP: u32 = 3;
pub const MASK: u32 = 4;

/// Trains a cased WordPiece vocabulary of `vocab_size` on `texts`.
pub fn train(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let model = WordPiece::builder()
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("wordpiece: {e}"))?;
    let mut tk = TokenizerBuilder::<
        WordPiece,
        BertNormalizer,
        BertPreTokenizer,
        BertProcessing,
        WordPieceDecoder,
    >::new()
    .with_model(model)
    .with_normalizer(Some(BertNormalizer::new(true, true, Some(false), false)))
    .with_pre_tokenizer(Some(BertPreTokenizer))
    .with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), SEP),
        ("[CLS]".into(), CLS),
    )))
    .with_decoder(Some(WordPieceDecoder::default()))
    .build()
    .map_err(|e| anyhow!("tokenizer: {e}"))?;
    let mut trainer = WordPieceTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(s.to_string(), true))
                .collect(),
        )
        .build();
    tk.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    let tok: Tokenizer = tk.into();
    for (i, s) in SPECIALS.iter().enumerate() {
        if tok.token_to_id(s) != Some(i as u32) {
            return Err(anyhow!("special token {s} did not get id {i}"));
        }
    }
    Ok(tok)
}

/// Keeps the head and the tail of a too-long id list (`[CLS]` and `[SEP]` stay): 3/4 head.
pub fn truncate(ids: &[u32], max_len: usize) -> Vec<u32> {
    if ids.len() <= max_len {
        return ids.to_vec();
    }
    let head = (max_len * 3) / 4;
    let tail = max_len - head;
    ids[..head]
        .iter()
        .chain(&ids[ids.len() - tail..])
        .copied()
        .collect()
}

/// Ids of `texts` with `[CLS]`/`[SEP]`, head+tail truncated to `max_len`.
pub fn encode_all(tok: &Tokenizer, texts: &[&str], max_len: usize) -> Result<Vec<Vec<u32>>> {
    let encs = tok
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| anyhow!("encoding: {e}"))?;
    Ok(encs
        .iter()
        .map(|e| truncate(e.get_ids(), max_len))
        .collect())
}

/// Ids of pre-split words and, per token, the index of its word (`None` for specials); the tail
/// past `max_len` is cut (keeping `[SEP]`).
pub fn encode_words(
    tok: &Tokenizer,
    words: &[String],
    max_len: usize,
) -> Result<(Vec<u32>, Vec<Option<u32>>)> {
    let input: Vec<&str> = words.iter().map(String::as_str).collect();
    let enc = tok
        .encode(InputSequence::from(input), true)
        .map_err(|e| anyhow!("encoding words: {e}"))?;
    let mut ids = enc.get_ids().to_vec();
    let mut wids = enc.get_word_ids().to_vec();
    if ids.len() > max_len {
        ids.truncate(max_len - 1);
        ids.push(SEP);
        wids.truncate(max_len - 1);
        wids.push(None);
    }
    Ok((ids, wids))
}

/// Token-level BIO labels from word tags: a word's first piece takes its tag, later pieces of a
/// `B-X` word take `I-X` (tag ids as in `data::pii_labels`); specials are `O`.
pub fn token_tags(word_ids: &[Option<u32>], word_tags: &[usize]) -> Vec<u32> {
    let mut prev: Option<u32> = None;
    word_ids
        .iter()
        .map(|w| {
            let t = match w {
                None => 0,
                Some(w) => {
                    let tag = word_tags.get(*w as usize).copied().unwrap_or(0);
                    if prev == Some(*w) && tag % 2 == 1 {
                        tag + 1
                    } else {
                        tag
                    }
                }
            };
            prev = *w;
            t as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_head_and_tail() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(truncate(&ids, 20), ids);
        assert_eq!(truncate(&ids, 8), vec![0, 1, 2, 3, 4, 5, 8, 9]);
    }

    #[test]
    fn trained_tokenizer_has_specials_and_template() -> Result<()> {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("The patient number {i} visited the hospital in Paris on Monday."))
            .collect();
        let tok = train(&texts, 200)?;
        let ids = encode_all(&tok, &["The patient visited Paris."], 128)?;
        assert_eq!(ids[0].first(), Some(&CLS));
        assert_eq!(ids[0].last(), Some(&SEP));
        let words: Vec<String> = ["Visited", "Parisian", "hospital"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (ids, wids) = encode_words(&tok, &words, 128)?;
        assert_eq!(ids.len(), wids.len());
        assert_eq!(wids.first(), Some(&None));
        // B-X on a word split in pieces: first piece B, the rest I.
        let tags = token_tags(&wids, &[0, 1, 0]);
        let pieces: Vec<u32> = wids
            .iter()
            .zip(&tags)
            .filter(|(w, _)| **w == Some(1))
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(pieces[0], 1);
        assert!(pieces[1..].iter().all(|t| *t == 2));
        Ok(())
    }
}
