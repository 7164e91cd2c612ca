//! Tool calling (OpenAI `tools` / `tool_choice`): functions the model may call, how the prompt
//! offers them, how a call is constrained and read back from the answer.
//!
//! Calls are written the way Qwen, Hermes and many fine-tunes are trained to write them, one per
//! block: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
//!
//! - A chat template that knows tools (it reads `tools`) renders them itself; for one that does
//!   not, the engine describes them in a system message in that convention ([`ToolUse::instructions`]).
//! - `required` and a named function constrain the answer to call blocks whose JSON matches the
//!   functions' parameter schemas ([`ToolUse::grammar`], enforced like a JSON schema, written
//!   compactly as templates write calls), so the calls are valid by construction.
//! - `auto` leaves the model free to answer in text or to call; once it has written
//!   `<tool_call>` itself, the rest of the answer is constrained the same way
//!   ([`ToolUse::grammar_after_start`]). [`parse_tool_calls`] reads the blocks back (text before
//!   the first block is the answer's content).

use std::sync::Arc;

use serde_json::{json, Value};
use switchyard_models::text::{python_json, ChatMessage};

/// What opens a call block.
pub const TOOL_CALL_START: &str = "<tool_call>";
/// What closes it.
pub const TOOL_CALL_END: &str = "</tool_call>";

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Its name (what a call names).
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// JSON schema of its arguments (an object schema; `{}`: any arguments).
    pub parameters: Value,
}

/// Whether and which functions the model must call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are given).
    Auto,
    /// At least one call, of any of the functions.
    Required,
    /// Exactly this function.
    Function(String),
}

/// The tools of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolUse {
    /// The functions offered.
    pub functions: Arc<Vec<Function>>,
    /// Whether a call is required.
    pub choice: ToolChoice,
    /// Whether several calls may come in one answer.
    pub parallel: bool,
}

/// A call the model made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments (a JSON object).
    pub arguments: Value,
}

impl Function {
    /// The function as OpenAI describes it: `{"name", "description", "parameters"}`, keys in
    /// the order of OpenAI's documentation.
    pub fn spec(&self) -> Value {
        let mut function = serde_json::Map::new();
        function.insert("name".into(), json!(self.name));
        if let Some(d) = &self.description {
            function.insert("description".into(), json!(d));
        }
        function.insert("parameters".into(), self.parameters.clone());
        Value::Object(function)
    }

    /// The OpenAI tool shape templates iterate over: `{"type": "function", "function": spec}`.
    pub fn to_openai(&self) -> Value {
        json!({"type": "function", "function": self.spec()})
    }
}

impl ToolUse {
    /// The functions in the OpenAI shape, as chat templates take them.
    pub fn template_tools(&self) -> Vec<Value> {
        self.functions.iter().map(Function::to_openai).collect()
    }

    /// A system message that offers the functions to a model whose template does not render tools.
    pub fn instructions(&self) -> String {
        let mut text = String::from("You can call functions. Their JSON signatures:\n<tools>\n");
        for f in self.functions.iter() {
            text.push_str(&python_json(&f.spec(), None));
            text.push('\n');
        }
        text.push_str(&format!(
            "</tools>\nTo call one, answer with:\n{TOOL_CALL_START}\n{{\"name\": <name>, \
             \"arguments\": <arguments object>}}\n{TOOL_CALL_END}"
        ));
        match &self.choice {
            ToolChoice::Auto => {}
            ToolChoice::Required => text.push_str("\nYou must call a function."),
            ToolChoice::Function(name) => text.push_str(&format!("\nYou must call `{name}`.")),
        }
        text
    }

    /// The grammar (llguidance's Lark dialect) an answer must follow when a call is required:
    /// call blocks (one, or several when `parallel`) of the allowed functions, their arguments
    /// matching each function's schema. `None` for [`ToolChoice::Auto`].
    pub fn grammar(&self) -> Option<String> {
        let allowed: Vec<&Function> = match &self.choice {
            ToolChoice::Auto => return None,
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Function(name) => {
                self.functions.iter().filter(|f| &f.name == name).collect()
            }
        };
        Some(format!(
            "start: call{}\n{}",
            self.more(),
            call_rules(&allowed)
        ))
    }

    /// With [`ToolChoice::Auto`], the grammar of what follows once the model has written
    /// [`TOOL_CALL_START`] itself: the rest of that block (its JSON a call of a given function),
    /// then more blocks when `parallel`. `None` for the other choices, whose whole answer
    /// [`grammar`](Self::grammar) constrains.
    pub fn grammar_after_start(&self) -> Option<String> {
        if self.choice != ToolChoice::Auto {
            return None;
        }
        let all: Vec<&Function> = self.functions.iter().collect();
        Some(format!(
            "start: rest{}\nrest: \"\\n\" %json {} {}\n{}",
            self.more(),
            calls_schema(&all),
            json!(format!("\n{TOOL_CALL_END}")),
            call_rules(&all)
        ))
    }

    /// What may follow a block: more blocks, each after a newline, when several calls are
    /// allowed (the answer may end after any block, where chat models end their turn).
    fn more(&self) -> &'static str {
        if self.parallel {
            " (\"\\n\" call)*"
        } else {
            ""
        }
    }
}

/// The JSON schema of one call of any of `functions`: `{"name": <one of them>, "arguments":
/// <its parameters>}`, written compactly with the separators of Python's `json.dumps`, as
/// templates write calls (`tojson`): the model stays in the format it learned, and cannot pad
/// with whitespace.
fn calls_schema(functions: &[&Function]) -> Value {
    let calls: Vec<Value> = functions
        .iter()
        .map(|f| {
            json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    let compact = json!({"item_separator": ", ", "key_separator": ": ",
                         "whitespace_flexible": false, "coerce_one_of": true});
    json!({"anyOf": calls, "x-guidance": compact})
}

/// The Lark rule `call`: one whole block calling one of `functions`. String literals take
/// JSON-style escapes, so the tags are written as JSON strings.
fn call_rules(functions: &[&Function]) -> String {
    let open = json!(format!("{TOOL_CALL_START}\n"));
    let close = json!(format!("\n{TOOL_CALL_END}"));
    format!("call: {open} %json {} {close}\n", calls_schema(functions))
}

/// Whether a conversation has tool calls or results in it.
pub fn has_tool_history(messages: &[ChatMessage]) -> bool {
    messages
        .iter()
        .any(|m| m.role == "tool" || m.tool_calls.is_some())
}

/// The conversation for a template that does not know tools: an assistant turn's calls are
/// appended to its text as call blocks, and a `tool` message becomes a `user` message with the
/// result inside `<tool_response></tool_response>` (as Qwen's templates render them).
pub fn written_out(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| {
            let mut out = ChatMessage::new(m.role.clone(), m.content.clone());
            out.reasoning_content = m.reasoning_content.clone();
            if m.role == "tool" {
                out.role = "user".into();
                out.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
            }
            for call in m.tool_calls.iter().flatten() {
                let f = call.get("function").unwrap_or(call);
                let block = json!({"name": f.get("name"), "arguments": f.get("arguments")});
                if !out.content.is_empty() {
                    out.content.push('\n');
                }
                let block = python_json(&block, None);
                out.content
                    .push_str(&format!("{TOOL_CALL_START}\n{block}\n{TOOL_CALL_END}"));
            }
            out
        })
        .collect()
}

/// The calls in an answer: the text before the first call block, and each block's call. `None`
/// when the answer has no block, or a block that is not a JSON object with a `name` among
/// `functions` and object `arguments` (such an answer is text: the caller returns it as it is).
pub fn parse_tool_calls(text: &str, functions: &[Function]) -> Option<(String, Vec<ToolCall>)> {
    let first = text.find(TOOL_CALL_START)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(after) = rest.trim_start().strip_prefix(TOOL_CALL_START) {
        let end = after.find(TOOL_CALL_END);
        // A block cut short by the length limit has no end tag; it is still read if whole JSON.
        let body = &after[..end.unwrap_or(after.len())];
        let call: Value = serde_json::from_str(body.trim()).ok()?;
        let name = call.get("name")?.as_str()?;
        if !functions.iter().any(|f| f.name == name) {
            return None;
        }
        let arguments = match call.get("arguments").or_else(|| call.get("parameters")) {
            Some(Value::Object(a)) => Value::Object(a.clone()),
            // Some models write the arguments as a JSON string.
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)?,
            None => json!({}),
            Some(_) => return None,
        };
        calls.push(ToolCall {
            name: name.to_string(),
            arguments,
        });
        rest = end.map_or("", |e| &after[e + TOOL_CALL_END.len()..]);
    }
    if !rest.trim().is_empty() {
        return None;
    }
    Some((text[..first].trim_end().to_string(), calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<Function> {
        vec![Function {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }]
    }

    #[test]
    fn call_blocks_are_read_with_the_text_before_them() {
        let f = weather();
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}\n</tool_call>";
        let (content, calls) = parse_tool_calls(text, &f).unwrap();
        assert_eq!(content, "Let me check.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, json!({"city": "Oslo"}));
        assert_eq!(calls[1].arguments, json!({"city": "Rome"}));
    }

    #[test]
    fn answers_that_are_not_calls_stay_text() {
        let f = weather();
        for text in [
            "The weather is fine.",
            "<tool_call>\n{\"name\": \"launch\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": [1]}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call> and more text",
        ] {
            assert_eq!(parse_tool_calls(text, &f), None, "{text}");
        }
    }

    #[test]
    fn history_is_written_out_for_templates_without_tools() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![json!({"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}})]);
        let mut result = ChatMessage::new("tool", "12 degrees");
        result.tool_call_id = Some("c1".into());
        let history = [ChatMessage::new("user", "Weather?"), call, result];
        assert!(has_tool_history(&history));
        assert!(!has_tool_history(&history[..1]));
        let out = written_out(&history);
        assert_eq!(out[0], history[0]);
        assert_eq!(
            out[1].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(out[1].tool_calls, None);
        assert_eq!(out[2].role, "user");
        assert_eq!(
            out[2].content,
            "<tool_response>\n12 degrees\n</tool_response>"
        );
        // And the blocks written out read back as the calls.
        let (_, calls) = parse_tool_calls(&out[1].content, &weather()).unwrap();
        assert_eq!(calls[0].arguments, json!({"city": "Oslo"}));
    }

    #[test]
    fn the_grammar_names_the_allowed_functions_only() {
        let mut functions = weather();
        functions.push(Function {
            name: "get_time".into(),
            description: None,
            parameters: json!({}),
        });
        let mut tools = ToolUse {
            functions: Arc::new(functions),
            choice: ToolChoice::Auto,
            parallel: true,
        };
        assert_eq!(tools.grammar(), None);
        let after = tools.grammar_after_start().unwrap();
        assert!(
            after.starts_with("start: rest (\"\\n\" call)*\nrest: \"\\n\" %json"),
            "{after}"
        );
        assert!(
            after.contains("get_time") && after.contains("get_weather"),
            "{after}"
        );
        tools.choice = ToolChoice::Function("get_time".into());
        assert_eq!(tools.grammar_after_start(), None);
        let g = tools.grammar().unwrap();
        assert!(g.contains("get_time") && !g.contains("get_weather"), "{g}");
        assert!(g.starts_with("start: call (\"\\n\" call)*\n"), "{g}");
        tools.choice = ToolChoice::Required;
        tools.parallel = false;
        let g = tools.grammar().unwrap();
        assert!(g.contains("get_time") && g.contains("get_weather"), "{g}");
        assert!(g.starts_with("start: call\n"), "{g}");
    }
}
