//! Chat templates rendered with a real Jinja engine (minijinja), as `transformers` renders them.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// One chat message as templates see it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or another role a template knows).
    pub role: String,
    /// The message text.
    pub content: String,
    /// Earlier thinking of an assistant turn, for templates that render it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Calls an assistant turn made, in the OpenAI shape (`{"type": "function", "function":
    /// {"name", "arguments"}}`, arguments as a JSON object, which is what templates print).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// For a `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// A compiled chat template and the special-token strings it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    /// The variant for requests with tools (`tokenizer_config.json`'s named `tool_use` template,
    /// GGUF `tokenizer.chat_template.tool_use`), compiled as `tool_use` beside `chat`.
    tool_use_source: Option<String>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        message,
    ))
}

/// `strftime_now` as transformers defines it: `datetime.now().strftime(format)`, the local time
/// (templates use it for "today's date" in system prompts). A format chrono cannot read is an error.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime_now: cannot read the format {format:?}"),
        )
    })?;
    Ok(out)
}

/// `tojson` as `transformers` renders templates: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent, separators=separators, sort_keys=sort_keys)`, each argument taken as
/// transformers' filter takes it. minijinja's own filter writes compact JSON and escapes `<`, `>`,
/// `&` and `'` for HTML, so a tool description with `<` in it would reach the model as `\u003c`.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let bad = |message: &str| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message.to_string())
    };
    let separators = match kwargs.get::<Option<minijinja::Value>>("separators")? {
        None => None,
        Some(pair) => {
            let parts: Option<Vec<String>> = pair
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect();
            match parts.as_deref() {
                Some([item, key]) => Some((item.clone(), key.clone())),
                _ => return Err(bad("tojson: separators must be two strings")),
            }
        }
    };
    let style = JsonStyle {
        indent: kwargs.get("indent")?,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        separators,
    };
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| bad(&e.to_string()))?;
    let mut out = String::new();
    write_python_json(&mut out, &json, &style, 0);
    Ok(minijinja::Value::from_safe_string(out))
}

/// The arguments of Python's `json.dumps` that templates pass.
#[derive(Default)]
struct JsonStyle {
    indent: Option<usize>,
    /// Non-ASCII text written as `\uXXXX` escapes.
    ensure_ascii: bool,
    sort_keys: bool,
    /// (between items, between a key and its value); Python's defaults when `None`.
    separators: Option<(String, String)>,
}

/// `value` written as Python's `json.dumps(value, ensure_ascii=False, indent=indent)` writes it:
/// `", "` and `": "` between items, or with `indent`, `","` and a new line per item; keys in their
/// order; non-ASCII text as it is. What chat models saw in training, in their templates' `tojson`.
pub fn python_json(value: &serde_json::Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    let style = JsonStyle {
        indent,
        ..JsonStyle::default()
    };
    write_python_json(&mut out, value, &style, 0);
    out
}

fn write_python_json(out: &mut String, value: &serde_json::Value, style: &JsonStyle, depth: usize) {
    use serde_json::Value;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let (item_sep, key_sep) = match &style.separators {
        Some((item, key)) => (item.as_str(), key.as_str()),
        None if style.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let string = |out: &mut String, text: &str| {
        let quoted = Value::String(text.to_string()).to_string();
        if !style.ensure_ascii {
            return out.push_str(&quoted);
        }
        for c in quoted.chars() {
            // Python's `ensure_ascii` escapes all but printable ASCII: DEL too.
            if c.is_ascii() && c != '\x7f' {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(out, item, style, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                string(out, key);
                out.push_str(key_sep);
                write_python_json(out, item, style, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
        Value::String(text) => string(out, text),
        Value::Number(n) if n.is_f64() => out.push_str(&python_float(n.as_f64().unwrap_or(0.0))),
        // Other scalars and empty containers: the same text either way.
        other => out.push_str(&other.to_string()),
    }
}

/// A float as Python's `repr` (and so `json.dumps`) writes it: the shortest digits that read back
/// the same, in positional notation for decimal exponents -4 to 15 (`0.0001`, `100.0`), else in
/// scientific notation with a signed exponent of at least two digits (`1e-05`, `1.5e+16`).
fn python_float(x: f64) -> String {
    if !x.is_finite() {
        return match (x.is_nan(), x > 0.0) {
            (true, _) => "NaN",
            (false, true) => "Infinity",
            (false, false) => "-Infinity",
        }
        .to_string();
    }
    // Rust's `{:e}` has the shortest round-trip digits: `1.5e16`, `1e-5`, `-2.5e0`.
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            plain + ".0"
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' `AssistantTracker` extension, which
/// marks the assistant's tokens for training masks and renders its body unchanged) as a block
/// minijinja knows, `{% if true %}` / `{% endif %}`, whitespace control kept.
fn without_generation_tags(source: &str) -> String {
    static TAG: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%(-?)\s*(end)?generation\s*(-?)%\}").expect("a valid pattern")
    });
    TAG.replace_all(source, |c: &regex::Captures| {
        let body = if c.get(2).is_some() {
            "endif"
        } else {
            "if true"
        };
        format!("{{%{} {body} {}%}}", &c[1], &c[3])
    })
    .into_owned()
}

/// Template variables the renderer sets itself (and the functions it provides), which a request's
/// extra variables may not replace.
pub const RESERVED_TEMPLATE_VARS: [&str; 8] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "enable_thinking",
    "bos_token",
    "eos_token",
    "raise_exception",
    "strftime_now",
];

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are exposed to it as in `transformers`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", without_generation_tags(source))
            .map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(Self {
            env,
            source: source.to_string(),
            tool_use_source: None,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Sets the variant that renders requests with tools, as transformers picks a `tool_use`
    /// template when tools are passed (Hermes 2 Pro, Command R ship one).
    /// A variant that does not compile is an error, and the template is left as it was.
    pub fn set_tool_use(&mut self, source: &str) -> Result<()> {
        self.env
            .add_template_owned("tool_use", without_generation_tags(source))
            .map_err(|e| ModelError::Template(format!("the tool_use template: {e}")))?;
        self.tool_use_source = Some(source.to_string());
        Ok(())
    }

    /// The source that renders requests with tools: the `tool_use` variant if there is one.
    fn tools_source(&self) -> &str {
        self.tool_use_source.as_deref().unwrap_or(&self.source)
    }

    /// Whether the template renders the `tools` it is given (Qwen's, Hermes', Llama 3.1's do, and
    /// any `tool_use` variant).
    pub fn speaks_tools(&self) -> bool {
        self.tools_source().contains("tools")
    }

    /// Whether the template that renders a request (the `tool_use` variant when it has tools and
    /// there is one, else the default) renders tools, calls and results itself; when it does not,
    /// a caller writes them out as text.
    pub fn renders_tools(&self, with_tools: bool) -> bool {
        let source = if with_tools {
            self.tools_source()
        } else {
            &self.source
        };
        source.contains("tools")
    }

    /// Whether the template renders several calls in one assistant turn (it loops over a message's
    /// `tool_calls`, as Qwen's and Hermes' do, and does not refuse more than one, as Llama 3.1's
    /// does): a sign the model was trained to make parallel calls.
    pub fn renders_parallel_tool_calls(&self) -> bool {
        let source = self.tools_source();
        let loops = source.split("for ").skip(1).any(|rest| {
            let head = rest.split("%}").next().unwrap_or("");
            head.contains(" in ") && head.contains("tool_calls")
        });
        loops && !source.contains("only supports single tool-call")
    }

    /// Renders `messages`; `enable_thinking` is passed only when set (templates test `is defined`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        self.render_with_tools(messages, add_generation_prompt, enable_thinking, &[])
    }

    /// [`render`](Self::render) with `tools` (OpenAI-shaped function specs) passed to the
    /// template when there are any.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: &[serde_json::Value],
    ) -> Result<String> {
        let none = serde_json::Map::new();
        self.render_with_vars(
            messages,
            add_generation_prompt,
            enable_thinking,
            tools,
            &none,
        )
    }

    /// [`render_with_tools`](Self::render_with_tools) with more variables for the template
    /// (vLLM's `chat_template_kwargs`, e.g. a custom flag a fine-tune's template reads); the
    /// [`RESERVED_TEMPLATE_VARS`] are the renderer's own and are not taken from `vars`.
    pub fn render_with_vars(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: &[serde_json::Value],
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let name = match &self.tool_use_source {
            Some(_) if !tools.is_empty() => "tool_use",
            _ => "chat",
        };
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let mut ctx = serde_json::Value::Object(
            vars.iter()
                .filter(|(k, _)| !RESERVED_TEMPLATE_VARS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        ctx["messages"] =
            serde_json::to_value(messages).map_err(|e| ModelError::Template(e.to_string()))?;
        ctx["add_generation_prompt"] = add_generation_prompt.into();
        ctx["bos_token"] = self.bos_token.clone().into();
        ctx["eos_token"] = self.eos_token.clone().into();
        if let Some(flag) = enable_thinking {
            ctx["enable_thinking"] = flag.into();
        }
        if !tools.is_empty() {
            ctx["tools"] = tools.into();
        }
        tmpl.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| ModelError::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        let t = ChatTemplate::new(
            "{{ messages[0].tool_calls[0] | tojson }}|{{ messages[0].tool_calls[0] | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        let mut m = ChatMessage::new("assistant", "");
        m.tool_calls = Some(vec![
            serde_json::json!({"b": 1, "a": [1.5, "<é>", {}], "c": {"d": null}}),
        ]);
        let out = t.render(&[m], false, None).unwrap();
        // json.dumps({"b": 1, "a": [1.5, "<é>", {}], "c": {"d": None}}, ensure_ascii=False) and
        // the same with indent=2, keys in their order.
        assert_eq!(
            out,
            "{\"b\": 1, \"a\": [1.5, \"<é>\", {}], \"c\": {\"d\": null}}|{\n  \"b\": 1,\n  \"a\": [\n    1.5,\n    \"<é>\",\n    {}\n  ],\n  \"c\": {\n    \"d\": null\n  }\n}"
        );
    }

    #[test]
    fn tojson_takes_the_arguments_transformers_filter_takes() {
        let t = ChatTemplate::new(
            "{{ messages[0].tool_calls[0] | tojson(ensure_ascii=True, sort_keys=True) }}|\
             {{ messages[0].tool_calls[0] | tojson(separators=(',', ':')) }}",
            "",
            "",
        )
        .unwrap();
        let mut m = ChatMessage::new("assistant", "");
        m.tool_calls = Some(vec![serde_json::json!({"b": "é😀", "a": [1, 2]})]);
        let out = t.render(&[m], false, None).unwrap();
        // json.dumps(x, ensure_ascii=True, sort_keys=True) and json.dumps(x, separators=(",", ":"),
        // ensure_ascii=False).
        assert_eq!(
            out,
            "{\"a\": [1, 2], \"b\": \"\\u00e9\\ud83d\\ude00\"}|{\"b\":\"é😀\",\"a\":[1,2]}"
        );
        // An argument it does not know is an error, not ignored.
        let t = ChatTemplate::new("{{ 1 | tojson(colour=1) }}", "", "").unwrap();
        assert!(t.render(&[], false, None).is_err());
    }

    #[test]
    fn parallel_tool_calls_are_read_off_the_template() {
        let parallel = |src: &str| {
            ChatTemplate::new(src, "", "")
                .unwrap()
                .renders_parallel_tool_calls()
        };
        // Qwen's / Hermes' loop over a turn's calls.
        assert!(parallel(
            "{% for m in messages %}{% if m.tool_calls %}{%- for tool_call in m.tool_calls %}\
             <tool_call>{{ tool_call.function.name }}</tool_call>{% endfor %}{% endif %}{% endfor %}"
        ));
        // Llama 3.1's reads tools but refuses a second call.
        assert!(!parallel(
            "{% for m in messages %}{% if m.tool_calls %}{% if not m.tool_calls|length == 1 %}\
             {{ raise_exception('This model only supports single tool-calls at once!') }}{% endif %}\
             {% for c in m.tool_calls %}{{ c.function.name }}{% endfor %}{% endif %}{% endfor %}"
        ));
        // No calls rendered at all (SmolLM2's), or only the tools listed.
        assert!(!parallel(
            "{% for m in messages %}{{ m.content }}{% endfor %}"
        ));
        assert!(!parallel(
            "{% for t in tools %}{{ t | tojson }}{% endfor %}"
        ));
    }

    #[test]
    fn renders_python_string_methods_and_flags() {
        let src =
            "{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip() }}\n{% endfor %}\
                   {% if enable_thinking is defined and not enable_thinking %}NOTHINK{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let msgs = [ChatMessage::new("user", "  hi  ")];
        assert_eq!(t.render(&msgs, true, None).unwrap(), "USER:hi\n");
        assert_eq!(
            t.render(&msgs, true, Some(false)).unwrap(),
            "USER:hi\nNOTHINK"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('bad roles') }}", "", "").unwrap();
        let err = t.render(&[], false, None).unwrap_err().to_string();
        assert!(err.contains("bad roles"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }

    #[test]
    fn floats_are_written_as_python_writes_them() {
        for (x, python) in [
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5, "1.5"),
            (100.0, "100.0"),
            (-2.0, "-2.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (-3.25e-7, "-3.25e-07"),
            (1e100, "1e+100"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(x), python, "{x}");
        }
        let t = ChatTemplate::new("{{ messages[0].tool_calls | tojson }}", "", "").unwrap();
        let mut m = ChatMessage::new("assistant", "");
        m.tool_calls = Some(vec![serde_json::json!({"minimum": 1e-5, "n": 3})]);
        assert_eq!(
            t.render(&[m], false, None).unwrap(),
            "[{\"minimum\": 1e-05, \"n\": 3}]"
        );
    }

    #[test]
    fn ensure_ascii_escapes_delete_as_python_does() {
        let t = ChatTemplate::new(
            "{{ messages[0].content | tojson(ensure_ascii=True) }}|{{ messages[0].content | tojson }}",
            "",
            "",
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "a\u{7f}b")], false, None)
            .unwrap();
        assert_eq!(out, "\"a\\u007fb\"|\"a\u{7f}b\"");
    }

    #[test]
    fn loop_controls_and_generation_blocks_render_as_transformers_renders_them() {
        // transformers compiles templates with jinja2's loop controls and its `generation` block.
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.content == 'stop' %}{% break %}{% endif %}\
             {% if m.content == 'skip' %}{% continue %}{% endif %}{{ m.content }};{% endfor %}\
             {%- generation -%}  [G]  {%- endgeneration %}|{% generation %}x{% endgeneration %}",
            "",
            "",
        )
        .unwrap();
        let msgs = ["a", "skip", "b", "stop", "c"].map(|c| ChatMessage::new("user", c));
        assert_eq!(t.render(&msgs, false, None).unwrap(), "a;b;[G]|x");
    }

    #[test]
    fn strftime_now_reads_the_directives_python_reads() {
        let t =
            ChatTemplate::new("{{ strftime_now('%Y-%m-%d|%A|%-d %B|%H:%M|%%') }}", "", "").unwrap();
        let out = t.render(&[], false, None).unwrap();
        let now = chrono::Local::now();
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(parts.len(), 5, "{out}");
        assert_eq!(parts[0].len(), 10, "{out}");
        assert!(parts[0].starts_with(&now.format("%Y").to_string()), "{out}");
        assert_eq!(parts[1], now.format("%A").to_string(), "{out}");
        assert!(!out.contains("%A") && !out.contains("%H"), "{out}");
        assert!(
            parts[3].len() == 5 && parts[3].as_bytes()[2] == b':',
            "{out}"
        );
        assert_eq!(parts[4], "%");
    }

    #[test]
    fn extra_variables_reach_the_template_but_never_replace_its_own() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}{% endfor %}|{{ custom_flag }}|{{ add_generation_prompt }}",
            "",
            "",
        )
        .unwrap();
        let vars: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!({"custom_flag": "on", "messages": [], "add_generation_prompt": false}),
        )
        .unwrap();
        let out = t
            .render_with_vars(&[ChatMessage::new("user", "hi")], true, None, &[], &vars)
            .unwrap();
        assert_eq!(out, "hi|on|True");
    }

    #[test]
    fn a_tool_use_variant_renders_requests_with_tools() {
        let mut t = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "")
            .unwrap();
        assert!(!t.speaks_tools());
        // A variant that does not compile leaves the template as it was.
        assert!(t.set_tool_use("{% if %}").is_err());
        assert!(!t.speaks_tools());
        t.set_tool_use(
            "{{ tools | length }} tools: {% for m in messages %}{{ m.content }}{% endfor %}",
        )
        .unwrap();
        assert!(t.speaks_tools());
        // Without tools the default renders the request, and it does not render tools itself.
        assert!(t.renders_tools(true) && !t.renders_tools(false));
        let msgs = [ChatMessage::new("user", "hi")];
        let tool = serde_json::json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(
            t.render_with_tools(&msgs, true, None, &[tool]).unwrap(),
            "1 tools: hi"
        );
        assert_eq!(t.render(&msgs, true, None).unwrap(), "hi");
    }
}
