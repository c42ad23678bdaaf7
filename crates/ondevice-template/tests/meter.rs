//! Run-time memory bounds: bombs the static guard does not see (or that chat templates, which
//! have no static guard, may contain) are refused with a clear error before they allocate much;
//! the process's peak memory is read from `/proc/self/status` (nextest runs each test in its own
//! process) and must stay far below what the bomb would need. Time is printed, not asserted.
//!
//! Faithfulness: chat templates of the common families render byte for byte as plain minijinja
//! renders them, so metering changes nothing for real templates.

use std::time::Instant;

use minijinja::Environment;
use ondevice_template::{Limits, Sandbox};
use serde_json::json;

/// Peak resident memory of this process, in MiB (Linux; 0 elsewhere).
fn peak_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb / 1024)
}

fn refused(s: &Sandbox, source: &str, ctx: serde_json::Value, expect: &str) {
    let t = Instant::now();
    let r = s.render(source, &ctx);
    let took = t.elapsed();
    let err = match r {
        Ok(out) => panic!("rendered {} bytes instead of refusing: {source}", out.len()),
        Err(e) => e.0,
    };
    println!("{took:>10.2?}  peak {:>4} MiB  {err}", peak_mib());
    assert!(err.contains(expect), "{source}\n  error {err:?} does not mention {expect:?}");
    assert!(peak_mib() < 512, "{source}: peak memory {} MiB", peak_mib());
}

fn chat() -> Sandbox {
    Sandbox::for_chat_templates(Limits::chat_template())
}

#[test]
fn doubling_through_namespace_is_refused_at_run_time() {
    let s = chat();
    refused(
        &s,
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        json!({}),
        "memory limit",
    );
    refused(
        &s,
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        json!({}),
        "memory limit",
    );
    // Lists double lazily; measuring the result stops them before anything materializes.
    refused(
        &s,
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | join(',') }}",
        json!({}),
        "memory limit",
    );
    // Escaping grows a string of backslashes twofold per round.
    refused(
        &s,
        "{% set ns = namespace(s='\\\\\\\\') %}{% for i in range(40) %}{% set ns.s = ns.s | tojson %}{% endfor %}",
        json!({}),
        "memory limit",
    );
}

#[test]
fn repetition_and_joins_are_checked_before_they_allocate() {
    let s = chat();
    refused(&s, "{{ 'x' * 10**9 }}", json!({}), "memory limit");
    refused(&s, "{{ 'x' * n }}", json!({"n": 99_000_000}), "memory limit");
    refused(&s, "{{ ([1, 2, 3] * 1000000000) | list | length }}", json!({}), "memory limit");
    refused(&s, "{{ range(100000) | join(range(100000) | join) }}", json!({}), "larger than");
    refused(&s, "{{ ('x' * 1000).join(range(100000)) }}", json!({}), "larger than");
    refused(&s, "{{ t.replace('a', t) }}", json!({"t": "a".repeat(10_000)}), "larger than");
    refused(&s, "{{ '{:>1000000000}'.format('x') }}", json!({}), "at most 4096");
    // Lazily nested repetition: no single step is large, the string form would be.
    refused(
        &s,
        "{% set ns = namespace(a=[t]) %}{% for i in range(8) %}{% set ns.a = [ns.a] * 16 %}{% endfor %}{{ ns.a | string | length }}",
        json!({"t": "y".repeat(100)}),
        "memory limit",
    );
}

#[test]
fn captured_output_counts_against_the_render() {
    // Output captured in memory never reaches the output cap: the meter counts it.
    let s = chat();
    refused(
        &s,
        "{% set x %}{% for i in range(100000) %}{{ t }}{% endfor %}{% endset %}{{ x | length }}",
        json!({"t": "y".repeat(1000)}),
        "memory limit",
    );
    refused(
        &s,
        &format!(
            "{{% macro m() %}}{{% for i in range(100000) %}}{}{{% endfor %}}{{% endmacro %}}{{% set y = m() %}}{{{{ y | length }}}}",
            "z".repeat(1000)
        ),
        json!({}),
        "memory limit",
    );
    refused(
        &s,
        "{% filter upper %}{% for i in range(100000) %}{{ t }}{% endfor %}{% endfilter %}",
        json!({"t": "y".repeat(1000)}),
        "",
    );
}

#[test]
fn prompt_packs_are_metered_behind_the_static_guard() {
    let s = Sandbox::default();
    // A chain of small literal factors passes the static guard; the meter stops it.
    refused(
        &s,
        "{% set a = t * 16 %}{% set b = a * 16 %}{% set c = b * 16 %}{% set d = c * 16 %}{% set e = d * 16 %}{% set f = e * 16 %}{{ f | length }}",
        json!({"t": "abcdefgh"}),
        "memory limit",
    );
    // A loop inside a set block captures without emitting.
    refused(
        &s,
        "{% set x %}{% for i in range(100000) %}{{ t }}{% endfor %}{% endset %}{{ x | length }}",
        json!({"t": "y".repeat(1000)}),
        "memory limit",
    );
    // The helpers cannot be shadowed or called by name to bypass the meter.
    let e = s.render("{% set __odm_emit = 1 %}", json!({})).unwrap_err();
    assert!(e.0.contains("__"), "{e}");
    let c = chat();
    let e = c.render("{% macro __odm_op(a, b, c) %}{% endmacro %}{{ 'a' ~ 'b' }}", json!({})).unwrap_err();
    assert!(e.0.contains("reserved"), "{e}");
}

#[test]
fn the_budget_for_the_whole_render_is_configurable() {
    let s = Sandbox::new(Limits { max_built: 10_000, ..Limits::default() });
    let e = s.render("{% for i in range(1000) %}{{ t }}{% endfor %}", json!({"t": "0123456789ab"})).unwrap_err();
    assert!(e.0.contains("10000 bytes"), "{e}");
    assert_eq!(s.render("{% for i in range(10) %}{{ t }}{% endfor %}", json!({"t": "ab"})).unwrap(), "ab".repeat(10));
}

/// Representative chat templates (ChatML, Llama 3, Mistral, Qwen 2.5 with tools, Gemma, Phi 3):
/// the constructs real GGUF templates use.
const TEMPLATES: &[&str] = &[
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
    "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n{%- set ns = namespace() %}\n{%- set ns.index = 0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n            {{- raise_exception(\"After the optional system message, conversation roles must alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n    {%- endif %}\n{%- endfor %}\n",
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
    // Macros, call blocks, filters blocks, slices, tests, dict literals, loop controls.
    "{%- macro fmt(m, sep=': ') -%}{{ m.role | upper }}{{ sep }}{{ m.content[:20] }}{%- endmacro -%}\n{%- macro box() -%}[{{ caller() }}]{%- endmacro -%}\n{% for m in messages if m.role != 'tool' %}{% if loop.index > 3 %}{% break %}{% endif %}{% call box() %}{{ fmt(m) }}{% endcall %}\n{% endfor %}{% filter upper %}{{ {'a': 1, 'b': [1, 2.5, none, true]} | tojson }}{% endfilter %}{{ -3 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 'x' if messages | length is divisibleby 2 else 'y' }}{{ messages | map(attribute='role') | join('|') }}{% set x | trim %}  padded  {% endset %}[{{ x }}]",
];

fn plain_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |m: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m))
    });
    env
}

#[test]
fn metered_chat_templates_render_exactly_as_minijinja() {
    let s = chat();
    let env = plain_env();
    let contexts = [
        json!({"messages": [{"role": "user", "content": "Hi <|im_end|> there"}], "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true, "tools": null}),
        json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "  What is 2+2?  "},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?\n\n"}
        ], "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true,
           "tools": [{"type": "function", "function": {"name": "add", "parameters": {"a": "int"}}}]}),
    ];
    for (i, t) in TEMPLATES.iter().enumerate() {
        for (j, ctx) in contexts.iter().enumerate() {
            let want = env.render_str(t, ctx).map_err(|e| e.kind());
            let got = s.render(t, ctx).map_err(|e| e.0);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "template {i}, context {j}"),
                (Err(_), Err(_)) => {}
                (w, g) => panic!("template {i}, context {j}: minijinja {w:?}, sandbox {g:?}"),
            }
        }
    }
}
