//! Fuzzes credential parsing: the key format and every header a key may arrive in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_auth::{Presented, Token};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = Token::parse(s) {
            // A parsed key re-encodes to the same id and hash.
            let again = Token::parse(&t.expose()).expect("re-encoded key parses");
            assert_eq!(again.id(), t.id());
            assert!(again.secret_hash().matches(&t.secret_hash()));
        }
    }
    let third = data.len() / 3;
    let presented = Presented {
        authorization: Some(&data[..third]),
        x_api_key: Some(&data[third..2 * third]),
        websocket_protocol: Some(&data[2 * third..]),
    };
    let _ = presented.credential();
    let ws_only = Presented { websocket_protocol: Some(data), ..Default::default() };
    let _ = ws_only.credential();
});
