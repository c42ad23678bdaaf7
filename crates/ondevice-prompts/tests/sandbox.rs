//! The sandbox against template injection (CVE-2024-34359 payloads and classic Jinja SSTI chains)
//! and resource bombs (huge ranges, nested loops, deep recursion, string repetition, doubling,
//! output floods, output captured in memory): each is refused with a clear error, by the static
//! guard or by the run-time meter. Time and peak output are printed, not
//! asserted.

use std::time::Instant;

use ondevice_prompts::sandbox::{Limits, Sandbox};
use serde_json::json;

fn refused(source: &str, ctx: serde_json::Value, expect: &str) {
    let s = Sandbox::default();
    let t = Instant::now();
    let r = s.render(source, &ctx);
    let took = t.elapsed();
    let err = match r {
        Ok(out) => panic!("rendered {} bytes instead of refusing: {source}", out.len()),
        Err(e) => e.0,
    };
    println!("{took:>10.2?}  {err}");
    assert!(err.contains(expect), "{source}\n  error {err:?} does not mention {expect:?}");
}

#[test]
fn ssti_payloads_are_refused() {
    // CVE-2024-34359 (llama-cpp-python, a GGUF chat template).
    refused(
        "{% for x in ().__class__.__base__.__subclasses__() %}{% if \"warning\" in x.__name__ %}{{x()._module.__builtins__['__import__']('os').popen(\"touch /tmp/retr0reg\")}}{%endif%}{% endfor %}",
        json!({}),
        "__",
    );
    refused("{{ cycler.__init__.__globals__.os.popen('id').read() }}", json!({}), "__");
    refused("{{ lipsum.__globals__['os'].popen('id').read() }}", json!({}), "__");
    refused("{{ request.application.__globals__.__builtins__ }}", json!({}), "__");
    refused("{{ config.items() }}", json!({}), "undefined");
    refused("{{ self._TemplateReference__context }}", json!({}), "undefined");
    refused("{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", json!({}), "unknown filter");
    refused("{{ x|attr('__class__') }}", json!({"x": 1}), "unknown filter");
    refused("{% include '/etc/passwd' %}", json!({}), "not found");
    refused("{% import '/etc/passwd' as p %}", json!({}), "not found");
    refused("{% extends 'base.html' %}", json!({}), "not found");
    refused("{{ debug() }}", json!({}), "unknown function");
    refused("{{ namespace.__init__ }}", json!({}), "__");
}

#[test]
fn resource_bombs_are_refused() {
    refused("{% for i in range(10**9) %}x{% endfor %}", json!({}), "`**`");
    refused("{% for i in range(1000000000) %}x{% endfor %}", json!({}), "range has too many elements");
    refused("{% for i in range(n) %}x{% endfor %}", json!({"n": 1_000_000_000u64}), "range has too many elements");
    refused("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", json!({}), "steps");
    refused("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", json!({}), "recursion is not allowed");
    // Recursive loops over deeply nested data stop at the recursion limit.
    let mut deep = json!({"c": []});
    for _ in 0..100 {
        deep = json!({"c": [deep]});
    }
    refused("{% for x in [d] recursive %}[{{ loop(x.c) }}]{% endfor %}", json!({"d": deep}), "levels");
    refused("{{ 'a' * 1000000000 }}", json!({}), "repeating a string");
    refused("{{ s * 1000000000 }}", json!({"s": "a"}), "`*` needs an integer literal");
    refused("{{ s * n }}", json!({"s": "ab", "n": 10_000_000}), "`*` needs an integer literal");
    refused("{{ [1] * 1000000000 | list }}", json!({}), "no list literal");
    refused("{{ range(100000) | join(range(100000) | join) }}", json!({}), "larger than");
    refused("{{ range(100000) | join }}{{ range(100000) | join }}{{ range(100000) | join }}", json!({}), "bytes");
    refused("{{ t | replace('a', t) }}", json!({"t": "a".repeat(10_000)}), "replace would be larger");
    refused("{{ t | indent(1000000000) }}", json!({"t": "a\nb"}), "at most 64");
    refused("{{ '%1000000000s' | format('x') }}", json!({}), "unknown filter");
    refused(
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ t %}{% endfor %}",
        json!({"t": "a".repeat(1000)}),
        "namespace is unknown",
    );
    refused(
        "{% set b = a ~ c %}{% set c = b ~ a %}{% set b = a ~ c %}{% set c = b ~ a %}{% set b = c ~ b %}{% set c = b ~ c %}{% set b = c ~ b %}{% set c = b ~ c %}{% set b = c ~ b %}{% set c = b ~ c %}",
        json!({"a": "x", "c": "y"}),
        "more than 64 times",
    );
    refused(
        "{% macro f(x) %}{{ x }}{{ x }}{% endmacro %}{% set y = f(f(f(f(f(f(f(a))))))) %}",
        json!({"a": "x"}),
        "more than 64 times",
    );
    refused("{% set x = s ~ s %}{{ x }}", json!({"s": "a"}), "with itself");
    refused(
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        json!({}),
        "with itself",
    );
    refused("{% for i in range(100000) %}{{ text }}{% endfor %}", json!({"text": "y".repeat(1000)}), "bytes");
    // Past the static guard, the run-time meter: a chain of small factors, output captured in a
    // set block, a macro's captured output.
    refused(
        "{% set a = t * 16 %}{% set b = a * 16 %}{% set c = b * 16 %}{% set d = c * 16 %}{% set e = d * 16 %}{% set f = e * 16 %}{{ f | length }}",
        json!({"t": "abcdefgh"}),
        "memory limit",
    );
    refused(
        "{% set x %}{% for i in range(100000) %}{{ t }}{% endfor %}{% endset %}{{ x | length }}",
        json!({"t": "y".repeat(1000)}),
        "memory limit",
    );
    refused(
        "{% macro m(t) %}{% for i in range(100000) %}{{ t }}{% endfor %}{% endmacro %}{{ m(t) | length }}",
        json!({"t": "y".repeat(1000)}),
        "memory limit",
    );
    let big = "{{ x }}".repeat(50_000);
    refused(&big, json!({"x": 1}), "bytes");
}

#[test]
fn limits_are_configurable_and_named_in_errors() {
    let s = Sandbox::new(Limits { fuel: 50, ..Limits::default() });
    let e = s.render("{% for i in range(100) %}{{ i }}{% endfor %}", json!({})).unwrap_err();
    assert!(e.0.contains("more than 50 steps"), "{e}");
    let s = Sandbox::new(Limits { max_output: 10, ..Limits::default() });
    let e = s.render("{{ t }}", json!({"t": "01234567890"})).unwrap_err();
    assert!(e.0.contains("more than 10 bytes"), "{e}");
    assert_eq!(s.render("{{ t }}", json!({"t": "0123456789"})).unwrap(), "0123456789");
}

#[test]
fn chat_templates_render_in_the_same_environment() {
    // The ChatML template the engine falls back to, rendered by the shared sandbox.
    let chatml = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let s = Sandbox::for_chat_templates(Limits::default());
    let out = s
        .render(chatml, json!({"messages": [{"role": "user", "content": " hi "}], "add_generation_prompt": true}))
        .unwrap();
    assert_eq!(out, "<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\n");
    // Python string methods, as Hugging Face templates use them.
    assert_eq!(s.render("{{ m.strip() }}", json!({"m": " x "})).unwrap(), "x");
}

#[test]
fn prompt_filters() {
    let s = Sandbox::default();
    let docs = json!({"docs": ["alpha", {"title": "B", "text": "beta"}], "o": {"k": [1, 2]}});
    assert_eq!(s.render("{{ docs | join_documents }}", &docs).unwrap(), "[1] alpha\n\n[2] B\nbeta");
    assert_eq!(s.render("{{ docs | join_documents(sep='\\n') }}", &docs).unwrap(), "[1] alpha\n[2] B\nbeta");
    assert_eq!(s.render("{{ o | json }}", &docs).unwrap(), "{\"k\":[1,2]}");
    assert_eq!(s.render("{{ 'a\\nb' | indent(2) }}", &docs).unwrap(), "a\n  b");
    let e = s.render("{{ missing }}", &docs).unwrap_err();
    assert!(e.0.contains("undefined") && e.0.contains("declare the variable"), "{e}");
}
