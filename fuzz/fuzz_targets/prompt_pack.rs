//! Fuzzes prompt packs: the input is split at the first NUL into `pack.toml` and a template file
//! (`t.j2`); parsing, the lint, the sandbox guard and a render with small limits must answer a
//! pack or an error, never panic. The template is also rendered as a hostile chat template (the
//! lenient profile the engine uses, no static guard: only the run-time meter, fuel and caps stand
//! between it and the process's memory, so a memory blow-up here is a finding). The same bytes
//! are also tried as a canonical pack and as an archive.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use ondevice_prompts::pack::Pack;
use ondevice_prompts::sandbox::{Limits, Sandbox};

fuzz_target!(|data: &[u8]| {
    let _ = Pack::from_canonical(data);
    let _ = ondevice_prompts::archive::import(data, &[]);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (manifest, template) = text.split_once('\0').unwrap_or((text, ""));
    let sandbox = Sandbox::new(Limits { fuel: 20_000, max_output: 64 << 10, ..Limits::default() });
    let _ = sandbox.render(template, serde_json::json!({"text": "hello", "docs": ["a", "b"], "n": 3}));
    let chat = Sandbox::for_chat_templates(Limits {
        fuel: 20_000,
        max_output: 64 << 10,
        max_built: 1 << 20,
        ..Limits::chat_template()
    });
    let _ = chat.render(
        template,
        serde_json::json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi <|im_end|>"}],
            "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true, "text": "hello", "n": 3
        }),
    );
    let mut files = BTreeMap::new();
    files.insert("pack.toml".to_owned(), manifest.to_owned());
    files.insert("t.j2".to_owned(), template.to_owned());
    let Ok(pack) = Pack::from_files(files) else { return };
    let _ = ondevice_prompts::lint::lint_pack(&sandbox, &pack);
    let _ = ondevice_prompts::render::render(&sandbox, &pack, &BTreeMap::new());
    let back = Pack::from_canonical(&pack.canonical_bytes()).expect("a pack's canonical form parses");
    assert_eq!(back, pack);
});
