//! Greedy-decodes a prompt with a model path: `cargo run --release -p switchyard-models --example greedy -- MODEL PROMPT`.
use switchyard_models::decoder::{BlockTable, KvCache, LogitRows, SequenceInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = switchyard_models::load_generation_model(std::path::Path::new(&args[1]))?;
    let msgs = [switchyard_models::text::ChatMessage::new(
        "user",
        args[2].clone(),
    )];
    let prompt = match &model.chat_template {
        Some(t) => t.render(&msgs, true, None)?,
        None => args[2].clone(),
    };
    println!("{prompt:?}");
    let mut ids = model.tokenizer.encode(&prompt)?;
    println!("{ids:?}");
    let mut cache = KvCache::new(model.decoder.config(), 16, 256)?;
    let mut table = BlockTable::default();
    let mut pos = 0;
    let t0 = std::time::Instant::now();
    let mut fed = ids.clone();
    for step in 0..64 {
        cache.reserve(&mut table, pos + fed.len());
        let logits = model.decoder.forward(
            &[SequenceInput {
                tokens: &fed,
                start_position: pos,
                blocks: &table,
                logits: LogitRows::Last,
            }],
            &mut cache,
        )?;
        if step == 0 {
            println!("prefill {} tokens in {:?}", fed.len(), t0.elapsed());
        }
        pos += fed.len();
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        ids.push(next);
        fed = vec![next];
        if model.tokenizer.eos().contains(&next) {
            break;
        }
    }
    println!("{:?} total", t0.elapsed());
    println!("{}", model.tokenizer.decode(&ids)?);
    Ok(())
}
