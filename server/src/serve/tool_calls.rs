//! An answer's tool calls, split from its text as it streams (`<tool_call>` blocks,
//! [`switchyard_engine::tools`]) and written the OpenAI way.

use std::sync::Arc;

use serde_json::{json, Value};
use switchyard_engine::tools::{parse_tool_calls, Function, ToolCall, ToolChoice, TOOL_CALL_START};

/// The finish reason of an answer that made calls: `tool_calls`, except for a named
/// `tool_choice`, which OpenAI ends with `stop` (the client chose the call; vLLM does the same).
pub fn finish_reason_with_calls(choice: &ToolChoice) -> &'static str {
    match choice {
        ToolChoice::Function(_) => "stop",
        ToolChoice::Auto | ToolChoice::Required => "tool_calls",
    }
}

/// Splits an answer's text, delta by delta, into the content that may be sent at once and the
/// call blocks, which are held back until the answer ends.
pub struct CallSplitter {
    functions: Arc<Vec<Function>>,
    /// Text not sent yet: a possible start of a call block, or the blocks themselves.
    held: String,
    /// Whether a block has started (everything from there on is held).
    calling: bool,
}

impl CallSplitter {
    /// A splitter for answers that may call `functions`.
    pub fn new(functions: Arc<Vec<Function>>) -> Self {
        Self {
            functions,
            held: String::new(),
            calling: false,
        }
    }

    /// A whole answer's content and calls, as [`finish`](Self::finish) gives them after the
    /// content sent along the way.
    pub fn split(functions: Arc<Vec<Function>>, text: &str) -> (String, Option<Vec<ToolCall>>) {
        let mut splitter = Self::new(functions);
        let mut content = splitter.push(text);
        let (rest, calls) = splitter.finish();
        content.push_str(&rest);
        (content, calls)
    }

    /// Takes the next text delta; returns the content that can be sent now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.calling {
            return String::new();
        }
        if let Some(at) = self.held.find(TOOL_CALL_START) {
            self.calling = true;
            let content = self.held[..at].to_string();
            self.held.drain(..at);
            return content;
        }
        // Hold back the longest tail that could still become the start of a block.
        let keep = (1..TOOL_CALL_START.len().min(self.held.len() + 1))
            .rev()
            .find(|&n| {
                self.held.is_char_boundary(self.held.len() - n)
                    && TOOL_CALL_START.starts_with(&self.held[self.held.len() - n..])
            })
            .unwrap_or(0);
        let content = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        content
    }

    /// The end of the answer: the content still to send, and the calls (`None` when the held
    /// text is not a valid set of call blocks, which then goes out as content).
    pub fn finish(self) -> (String, Option<Vec<ToolCall>>) {
        if !self.calling {
            return (self.held, None);
        }
        match parse_tool_calls(&self.held, &self.functions) {
            Some((_, calls)) => (String::new(), Some(calls)),
            None => (self.held, None),
        }
    }
}

/// The calls as OpenAI's `tool_calls` (each with a fresh id; arguments as a JSON string); with
/// `index` for streamed deltas.
pub fn openai_tool_calls(calls: &[ToolCall], indexed: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut call = json!({
                "id": format!("call_{:024x}", rand::random::<u128>() >> 32),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()},
            });
            if indexed {
                call["index"] = json!(i);
            }
            call
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitter() -> CallSplitter {
        CallSplitter::new(Arc::new(vec![Function {
            name: "f".into(),
            description: None,
            parameters: json!({}),
        }]))
    }

    #[test]
    fn content_streams_and_a_call_is_held_back_across_deltas() {
        let mut s = splitter();
        let mut sent = String::new();
        for delta in [
            "Sure. <",
            "tool",
            "_call>\n{\"name\": \"f\", ",
            "\"arguments\": {}}\n</tool_call>",
        ] {
            sent.push_str(&s.push(delta));
        }
        assert_eq!(sent, "Sure. ");
        let (rest, calls) = s.finish();
        assert_eq!(rest, "");
        assert_eq!(calls.unwrap()[0].name, "f");
    }

    #[test]
    fn a_false_start_or_a_broken_call_is_sent_as_content() {
        let mut s = splitter();
        let mut sent = s.push("a <tool");
        assert_eq!(sent, "a ");
        sent.push_str(&s.push("box> b"));
        let (rest, calls) = s.finish();
        assert_eq!(sent + &rest, "a <toolbox> b");
        assert!(calls.is_none());

        let mut s = splitter();
        assert_eq!(s.push("<tool_call>\n{\"name\": \"g\"}"), "");
        let (rest, calls) = s.finish();
        assert_eq!(rest, "<tool_call>\n{\"name\": \"g\"}");
        assert!(calls.is_none());
    }

    #[test]
    fn calls_get_ids_and_string_arguments() {
        let calls = [ToolCall {
            name: "f".into(),
            arguments: json!({"x": 1}),
        }];
        let v = openai_tool_calls(&calls, true);
        assert_eq!(v[0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(v[0]["index"], 0);
        assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
        assert!(openai_tool_calls(&calls, false)[0].get("index").is_none());
    }
}
