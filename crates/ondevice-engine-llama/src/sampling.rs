//! Per-request sampling: validation of the request's parameters, the llama.cpp sampler chain, and
//! the text side of a sequence (incremental UTF-8 decoding and stop strings).

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use ondevice_runtime::{Constraint, RuntimeError, Sampling};

/// A JSON object (what OpenAI's `json_object` mode and Ollama's `format: "json"` promise), any
/// JSON inside it, whitespace limited to single spaces so a small model cannot pad forever.
/// Adapted from llama.cpp's `grammars/json.gbnf`.
pub const JSON_GBNF: &str = r#"root   ::= ws object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [0-9]{0,15})? ws
ws     ::= " "?
"#;

/// Validated sampling parameters of one generation, with defaults applied (llama.cpp's defaults:
/// temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repeat penalty, a random seed).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    seed: u32,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) stop: Vec<String>,
    grammar: Option<String>,
}

fn invalid(message: String) -> RuntimeError {
    RuntimeError::InvalidRequest { message }
}

impl Plan {
    /// Checks ranges and turns the constraint into a GBNF grammar.
    pub(crate) fn new(s: &Sampling) -> Result<Self, RuntimeError> {
        let temperature = s.temperature.unwrap_or(0.8);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(invalid(format!("temperature must be 0 or more, got {temperature}")));
        }
        let top_p = s.top_p.unwrap_or(0.95);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(invalid(format!("top_p must be in (0, 1], got {top_p}")));
        }
        let min_p = s.min_p.unwrap_or(0.05);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(invalid(format!("min_p must be in [0, 1], got {min_p}")));
        }
        let repeat_penalty = s.repeat_penalty.unwrap_or(1.0);
        if !repeat_penalty.is_finite() || repeat_penalty <= 0.0 {
            return Err(invalid(format!("repeat_penalty must be more than 0, got {repeat_penalty}")));
        }
        if s.max_tokens == Some(0) {
            return Err(invalid("max_tokens must be at least 1".into()));
        }
        if s.stop.iter().any(String::is_empty) {
            return Err(invalid("stop strings must not be empty".into()));
        }
        let seed = match s.seed {
            // Fold the 64-bit seed into llama.cpp's 32 bits; avoid LLAMA_DEFAULT_SEED (random).
            Some(seed) => ((seed ^ (seed >> 32)) as u32).min(u32::MAX - 1),
            None => random_seed(),
        };
        let grammar = match &s.constraint {
            None => None,
            Some(Constraint::Grammar(g)) => Some(g.clone()),
            Some(Constraint::Json) => Some(JSON_GBNF.to_owned()),
            Some(Constraint::JsonSchema(schema)) => {
                Some(llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
                    invalid(format!("cannot turn the JSON schema into a grammar: {e}: simplify the schema"))
                })?)
            }
        };
        Ok(Self {
            temperature,
            top_k: s.top_k.unwrap_or(40),
            top_p,
            min_p,
            repeat_penalty,
            seed,
            max_tokens: s.max_tokens,
            stop: s.stop.clone(),
            grammar,
        })
    }

    /// The samplers of one sequence: the chain (repeat penalty, then greedy at temperature 0 or
    /// top-k → top-p → min-p → temperature → seeded draw) and, for constrained output, the grammar.
    pub(crate) fn sampler(&self, model: &LlamaModel) -> Result<Sampler, RuntimeError> {
        let grammar = match &self.grammar {
            Some(grammar) => Some(LlamaSampler::grammar(model, grammar, "root").map_err(|e| {
                invalid(format!("the grammar does not parse ({e}): check the GBNF syntax and that it has a root rule"))
            })?),
            None => None,
        };
        let mut chain = Vec::new();
        if self.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(model.n_vocab(), 64, self.repeat_penalty, 0.0, 0.0));
        }
        if self.temperature == 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                chain.push(LlamaSampler::top_k(i32::try_from(self.top_k).unwrap_or(i32::MAX)));
            }
            chain.push(LlamaSampler::top_p(self.top_p, 1));
            chain.push(LlamaSampler::min_p(self.min_p, 1));
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed));
        }
        Ok(Sampler { chain: LlamaSampler::chain_simple(chain), grammar, candidates: Vec::new() })
    }
}

/// Picks each token of one sequence.
///
/// With a grammar, filtering the whole vocabulary through it every step costs far more than the
/// model on small models. So, as llama.cpp's own sampler does, the chain picks first from the raw
/// logits; only when the grammar rejects that token is the vocabulary filtered and the pick made
/// again. A greedy pick is therefore the same either way: the best token the grammar allows.
pub(crate) struct Sampler {
    chain: LlamaSampler,
    grammar: Option<LlamaSampler>,
    /// Reused candidate buffer (one entry per vocabulary token).
    candidates: Vec<LlamaTokenData>,
}

impl Sampler {
    /// Samples from batch output `at` and accepts the token into the samplers' state. `eos` ends
    /// the sequence when the grammar allows no token at all.
    pub(crate) fn sample(&mut self, ctx: &LlamaContext<'_>, at: i32, eos: LlamaToken) -> LlamaToken {
        let Some(grammar) = self.grammar.as_mut() else {
            // llama.cpp samples and accepts in one call.
            return self.chain.sample(ctx, at);
        };
        let logits = ctx.get_logits_ith(at);
        let mut pick = |filter: Option<&mut LlamaSampler>, buf: &mut Vec<LlamaTokenData>| {
            buf.clear();
            buf.extend(logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)));
            let mut array = LlamaTokenDataArray::new(std::mem::take(buf), false);
            if let Some(filter) = filter {
                array.apply_sampler(filter);
            }
            array.apply_sampler(&mut self.chain);
            let token = array.selected_token();
            *buf = array.data;
            token
        };
        let mut token = pick(None, &mut self.candidates);
        if !token.is_some_and(|t| allows(grammar, t)) {
            token = pick(Some(grammar), &mut self.candidates);
        }
        let token = token.unwrap_or(eos);
        // A token the grammar cannot take (only the end-of-sequence fallback above) would make
        // llama.cpp throw; the exception-safe accept reports it instead, and the sequence ends on it.
        let _ = grammar.try_accept(token);
        self.chain.accept(token);
        token
    }
}

/// Whether the grammar, in its current state, allows `token` next.
fn allows(grammar: &mut LlamaSampler, token: LlamaToken) -> bool {
    let mut single = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
    single.apply_sampler(grammar);
    single.data.first().is_some_and(|d| d.logit() != f32::NEG_INFINITY)
}

/// A seed from the clock and the address space layout; good enough to vary unseeded sampling.
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() as u32).min(u32::MAX - 1)
}

/// The text produced by one sequence: bytes of token pieces in, UTF-8 chunks out, holding back
/// incomplete characters and any tail that could still become a stop string.
#[derive(Debug, Default)]
pub(crate) struct TextOut {
    bytes: Vec<u8>,
    held: String,
    stop: Vec<String>,
}

/// The result of feeding one token's bytes.
#[derive(Debug, PartialEq)]
pub(crate) struct Chunk {
    /// Text that is safe to send now.
    pub(crate) text: String,
    /// A stop string was produced; `text` ends right before it and the generation is over.
    pub(crate) stopped: bool,
}

impl TextOut {
    pub(crate) fn new(stop: Vec<String>) -> Self {
        Self { stop, ..Self::default() }
    }

    pub(crate) fn push(&mut self, piece: &[u8]) -> Chunk {
        self.bytes.extend_from_slice(piece);
        let decoded = decode_prefix(&mut self.bytes);
        self.held.push_str(&decoded);
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            return Chunk { text: std::mem::take(&mut self.held), stopped: true };
        }
        let keep = self.stop.iter().map(|s| partial_suffix(&self.held, s)).max().unwrap_or(0);
        let text = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        Chunk { text, stopped: false }
    }

    /// Everything still held, at the end of a generation that did not hit a stop string.
    pub(crate) fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.bytes)));
        text
    }
}

/// Takes the longest valid UTF-8 prefix out of `bytes` (invalid sequences become U+FFFD), leaving
/// an incomplete trailing character in place.
fn decode_prefix(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[..valid]).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes.drain(..valid + bad);
                    }
                    None => {
                        bytes.drain(..valid);
                        return out;
                    }
                }
            }
        }
    }
}

/// Length of the longest proper suffix of `text` that is a prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&k| text.is_char_boundary(text.len() - k) && stop.starts_with(&text[text.len() - k..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(out: &mut TextOut, pieces: &[&[u8]]) -> (String, bool) {
        let mut text = String::new();
        for p in pieces {
            let c = out.push(p);
            text.push_str(&c.text);
            if c.stopped {
                return (text, true);
            }
        }
        text.push_str(&out.finish());
        (text, false)
    }

    #[test]
    fn utf8_is_never_split() {
        let euro = "€".as_bytes();
        let mut out = TextOut::new(vec![]);
        assert_eq!(out.push(&euro[..1]).text, "");
        assert_eq!(out.push(&euro[1..2]).text, "");
        assert_eq!(out.push(&[euro[2], b'!']).text, "€!");
        assert_eq!(out.push(&[0xff, b'a']).text, "\u{fffd}a");
        assert_eq!(out.push(&euro[..2]).text, "");
        assert_eq!(out.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_never_leak_partially() {
        let mut out = TextOut::new(vec!["END".into()]);
        assert_eq!(out.push(b"Hello E").text, "Hello ");
        assert_eq!(out.push(b"N").text, "");
        assert_eq!(out.push(b"Dless"), Chunk { text: String::new(), stopped: true });

        let mut out = TextOut::new(vec!["END".into()]);
        assert_eq!(feed(&mut out, &[b"an E", b"ND", b"x"]), ("an ".into(), true));
        let mut out = TextOut::new(vec!["END".into(), "\n\n".into()]);
        assert_eq!(feed(&mut out, &[b"E", b"nd\n", b"x"]), ("End\nx".into(), false));
        let mut out = TextOut::new(vec!["\n\n".into()]);
        assert_eq!(feed(&mut out, &[b"a\n", b"\nb"]), ("a".into(), true));
        let mut out = TextOut::new(vec!["€uro".into()]);
        assert_eq!(feed(&mut out, &["x€".as_bytes(), b"u"]), ("x€u".into(), false));
    }

    #[test]
    fn sampling_ranges_are_checked() {
        let bad = [
            Sampling { temperature: Some(-1.0), ..Default::default() },
            Sampling { top_p: Some(0.0), ..Default::default() },
            Sampling { min_p: Some(2.0), ..Default::default() },
            Sampling { max_tokens: Some(0), ..Default::default() },
            Sampling { stop: vec![String::new()], ..Default::default() },
        ];
        for s in bad {
            assert!(matches!(Plan::new(&s), Err(RuntimeError::InvalidRequest { .. })), "{s:?}");
        }
        let plan = Plan::new(&Sampling { seed: Some(u64::MAX), ..Default::default() }).unwrap();
        assert!(plan.seed < u32::MAX);
    }
}
