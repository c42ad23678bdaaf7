//! Fuzzes config parsing and validation: arbitrary text must give settings or a positioned
//! error, never a panic; accepted settings must survive the redacted `config show` round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ondevice_config::parse(text, None) {
        Ok(settings) => {
            let shown = ondevice_config::to_redacted_toml(&settings);
            let _ = ondevice_config::parse(&shown, None);
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(e.line().is_some_and(|l| l >= 1));
        }
    }
});
