//! Opens a generation model from a path: a `.gguf` file, or a Hugging Face checkpoint directory.

use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::text::{ChatTemplate, TextTokenizer};
use crate::weights::GgufFile;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Everything needed to generate text with one model.
#[derive(Debug)]
pub struct GenerationModel {
    /// A short name (the file or directory stem).
    pub name: String,
    /// The network.
    pub decoder: Decoder,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template, if the checkpoint ships one.
    pub chat_template: Option<ChatTemplate>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Loads the model at `path` (see the module docs for what a path may be).
pub fn load_generation_model(path: &Path) -> Result<GenerationModel> {
    if path.is_dir() {
        if path.join("config.json").exists() {
            return load_hf_dir(path);
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => load_gguf(one),
            [] => Err(ModelError::Config(format!(
                "{}: neither a config.json nor a .gguf file in this directory",
                path.display()
            ))),
            _ => Err(ModelError::Config(format!(
                "{}: several .gguf files; name the one to load",
                path.display()
            ))),
        };
    }
    load_gguf(path)
}

fn load_gguf(path: &Path) -> Result<GenerationModel> {
    let gguf = GgufFile::open(path)?;
    let decoder = Decoder::from_gguf(&gguf)?;
    let sidecar = path.with_file_name("tokenizer.json");
    // The special ids come from the GGUF's metadata either way.
    let tokenizer = if sidecar.exists() {
        let t = tokenizers::Tokenizer::from_file(&sidecar)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", sidecar.display())))?;
        TextTokenizer::new(t, None, vec![]).with_gguf_specials(&gguf)
    } else {
        TextTokenizer::from_gguf(&gguf)?
    };
    let token_text = |key: &str| {
        gguf.integer(key)
            .and_then(|id| tokenizer.token(id as u32))
            .unwrap_or_default()
    };
    let chat_template = gguf
        .string("tokenizer.chat_template")
        .map(|src| {
            let template = ChatTemplate::new(
                src,
                &token_text("tokenizer.ggml.bos_token_id"),
                &token_text("tokenizer.ggml.eos_token_id"),
            )?;
            Ok::<_, ModelError>(with_tool_use(
                template,
                gguf.string("tokenizer.chat_template.tool_use"),
            ))
        })
        .transpose()?;
    Ok(GenerationModel {
        name: name_of(path),
        decoder,
        tokenizer,
        chat_template,
    })
}

fn load_hf_dir(dir: &Path) -> Result<GenerationModel> {
    let decoder = Decoder::from_hf_dir(dir)?;
    let tok_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let bos = token_string(tok_config.get("bos_token"));
    let eos = token_string(tok_config.get("eos_token"));
    let mut tokenizer =
        TextTokenizer::from_file(&dir.join("tokenizer.json"), bos.as_deref(), eos.as_slice())?;
    // Unsaid in tokenizer_config.json, BOS comes first when the tokenizer's post-processor puts
    // it there, as transformers encodes a text.
    let add_bos = tok_config.get("add_bos_token").and_then(Value::as_bool);
    tokenizer.set_add_bos(add_bos.unwrap_or_else(|| tokenizer.post_processor_adds_bos()));
    if let Some(gen) = read_json(&dir.join("generation_config.json"))? {
        let ids: Vec<u32> = match gen.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        };
        tokenizer.add_eos(ids);
    }
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.exists() {
        Some(
            std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io {
                path: jinja.clone(),
                source,
            })?,
        )
    } else {
        named_template(tok_config.get("chat_template"), "default")
    };
    let tool_use = named_template(tok_config.get("chat_template"), "tool_use")
        .filter(|_| tok_config["chat_template"].is_array());
    let chat_template = source
        .map(|s| {
            let template = ChatTemplate::new(
                &s,
                bos.as_deref().unwrap_or(""),
                eos.as_deref().unwrap_or(""),
            )?;
            Ok::<_, ModelError>(with_tool_use(template, tool_use.as_deref()))
        })
        .transpose()?;
    Ok(GenerationModel {
        name: name_of(dir),
        decoder,
        tokenizer,
        chat_template,
    })
}

/// `template` with its `tool_use` variant when there is one; a variant that does not compile is
/// left out with a warning (requests with tools then use the default template, as before).
fn with_tool_use(mut template: ChatTemplate, tool_use: Option<&str>) -> ChatTemplate {
    if let Some(source) = tool_use {
        if let Err(e) = template.set_tool_use(source) {
            tracing::warn!("the chat template's tool_use variant is left out: {e}");
        }
    }
    template
}

/// `tokenizer_config.json`'s `chat_template`: a string (the one template, whatever `name` asks),
/// or a list of named templates (`[{"name": "default", "template": ...}, {"name": "tool_use",
/// ...}]`), of which transformers renders a chat with `default` and, when tools are passed, with
/// `tool_use` where there is one.
fn named_template(value: Option<&Value>, name: &str) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_named_chat_templates_renders_with_the_default_one() {
        let list = serde_json::json!([
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "plain"}
        ]);
        assert_eq!(
            named_template(Some(&list), "default").as_deref(),
            Some("plain")
        );
        assert_eq!(
            named_template(Some(&list), "tool_use").as_deref(),
            Some("tools")
        );
        assert_eq!(
            named_template(Some(&serde_json::json!("one")), "default").as_deref(),
            Some("one")
        );
        assert_eq!(named_template(None, "default"), None);
    }
}
