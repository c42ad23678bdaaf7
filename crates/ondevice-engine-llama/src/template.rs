//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja, as written for Hugging Face
//! transformers) rendered faithfully with minijinja.
//!
//! Templates come from model files, so they are untrusted code. The environment has no loader (no
//! filesystem access, no `include`/`import` of other files), every render is bounded by fuel
//! (executed instructions) and by an output cap, and every failure is an error value, never a panic.
//! As in transformers: `trim_blocks` and `lstrip_blocks` on, `raise_exception(msg)` fails the render,
//! Python string methods (`.strip()`, `.startswith()`, …) through minijinja-contrib's pycompat,
//! variables `messages`, `bos_token`, `eos_token` and `add_generation_prompt = true`.

use std::io;

use minijinja::{Environment, Error, ErrorKind, context};
use ondevice_runtime::{ChatMessage, RuntimeError};
use serde::Serialize;

/// Instructions one render may execute before it is stopped.
pub const DEFAULT_FUEL: u64 = 1_000_000;
/// Bytes one render may produce before it is stopped.
pub const DEFAULT_MAX_OUTPUT: usize = 4 << 20;

/// ChatML, used when a model has no template of its own (the engine logs that it does so).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A chat template ready to render conversations.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    fuel: u64,
    max_output: usize,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// A template with the model's special-token texts, default fuel and output cap. Syntax errors
    /// are reported by [`ChatTemplate::render`].
    pub fn new(source: impl Into<String>, bos_token: impl Into<String>, eos_token: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            fuel: DEFAULT_FUEL,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// Sets the instruction budget and the output cap of one render.
    pub fn with_limits(mut self, fuel: u64, max_output: usize) -> Self {
        self.fuel = fuel;
        self.max_output = max_output;
        self
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` with `add_generation_prompt = true`. A template that fails (syntax error,
    /// `raise_exception`, out of fuel, output too large) gives `InvalidRequest` naming the problem.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, RuntimeError> {
        self.render_inner(messages).map_err(|e| RuntimeError::InvalidRequest {
            message: format!("the model's chat template failed: {}", describe(&e)),
        })
    }

    fn render_inner(&self, messages: &[ChatMessage]) -> Result<String, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(self.fuel));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {message}")))
        });
        let template = env.template_from_str(&self.source)?;
        let messages: Vec<Message<'_>> =
            messages.iter().map(|m| Message { role: m.role.as_str(), content: &m.content }).collect();
        let ctx = context! {
            messages => messages,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            add_generation_prompt => true,
        };
        let mut out = CappedWriter { buf: Vec::new(), cap: self.max_output };
        template.render_captured_to(ctx, &mut out)?;
        String::from_utf8(out.buf).map_err(|_| Error::new(ErrorKind::BadSerialization, "output is not UTF-8"))
    }
}

/// The error chain of a minijinja error, with the template line when known.
fn describe(e: &Error) -> String {
    let mut text = match e.line() {
        Some(line) => format!("{e} (template line {line})"),
        None => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An output buffer that refuses to grow past `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::other(format!("the rendered prompt exceeds {} bytes", self.cap)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ondevice_runtime::Role;

    use super::*;

    fn chat() -> Vec<ChatMessage> {
        vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hi")]
    }

    #[test]
    fn chatml_fallback_renders_a_generation_prompt() {
        let out = ChatTemplate::new(CHATML, "", "").render(&chat()).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_raise_exception_and_special_tokens_work() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['system', 'user'] %}\
                   {{ raise_exception('bad role ' + m.role) }}{% endif %}[{{ m.content.strip().upper() }}]{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>");
        let mut msgs = chat();
        msgs[1].content = "  hi  ".into();
        assert_eq!(t.render(&msgs).unwrap(), "<s>[BE BRIEF.][HI]</s>");
        msgs.push(ChatMessage::new(Role::Tool, "x"));
        let err = t.render(&msgs).unwrap_err().to_string();
        assert!(err.contains("bad role tool"), "{err}");
    }

    #[test]
    fn hostile_templates_are_stopped() {
        let cases = [
            ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "fuel"),
            ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "exceeds"),
            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
            ("{% include 'etc/passwd' %}", "template"),
            ("{% for m in messages %}", "syntax"),
        ];
        for (src, expect) in cases {
            let err = ChatTemplate::new(src, "", "").render(&chat()).unwrap_err();
            assert!(matches!(err, RuntimeError::InvalidRequest { .. }), "{src}: {err:?}");
            let text = err.to_string().to_lowercase();
            assert!(text.contains(expect), "{src}: {text}");
        }
    }
}
