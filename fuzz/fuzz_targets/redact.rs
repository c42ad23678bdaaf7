//! Fuzzes the diagnostics redactor with arbitrary text, log lines and JSON reports: it never
//! panics, and a planted secret spliced anywhere into the input never survives, whatever the
//! patterns, path rules and content rules do around it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_diagnostics::Redactor;
use ondevice_diagnostics::redact::Redactions;

const SECRET: &str = "Zq9PlantedLiteral7";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut r = Redactor::new();
    r.secret(SECRET, "planted");
    r.path(std::path::Path::new("/home/fuzz/.local/share/ondevice"), "$ONDEVICE_HOME");
    r.path(std::path::Path::new("/home/fuzz"), "~");
    let mut counts = Redactions::new();
    let _ = r.text(s, &mut counts);
    let _ = r.log_line(s, &mut counts);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        let _ = r.report(&v, &mut counts);
        let _ = r.json(&v, &mut counts);
    }
    // The secret spliced in at a char boundary chosen by the input.
    let at = s.char_indices().map(|(i, _)| i).nth(data.first().copied().unwrap_or(0) as usize).unwrap_or(s.len());
    let planted = format!("{}{SECRET}{}", &s[..at], &s[at..]);
    for out in [r.text(&planted, &mut counts), r.log_line(&planted, &mut counts)] {
        assert!(!out.contains(SECRET), "the planted secret survived: {out:?}");
    }
});
