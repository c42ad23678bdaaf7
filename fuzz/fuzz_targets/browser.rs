//! Fuzzes what a browser sends for the console's session: `Cookie` headers, `Origin` against the
//! request's host, and the CSRF token comparison.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ondevice_auth::browser::{SESSION_COOKIE, same_origin, session_cookie};
use ondevice_auth::{SessionLimits, Sessions};

fuzz_target!(|data: &[u8]| {
    // Up to three Cookie headers, split at NUL bytes.
    let headers: Vec<&[u8]> = data.split(|&b| b == 0).take(3).collect();
    if let Some(v) = session_cookie(headers.iter().copied()) {
        assert!(!v.is_empty() && !v.contains(';'), "{v:?}");
        let needle = format!("{SESSION_COOKIE}=");
        assert!(headers.iter().any(|h| h.windows(needle.len()).any(|w| w == needle.as_bytes())));
    }

    // Origin and host: the halves of the input.
    let (origin, host) = data.split_at(data.len() / 2);
    let host = std::str::from_utf8(host).ok();
    for tls in [false, true] {
        if same_origin(origin, tls, host) {
            let scheme: &[u8] = if tls { b"https://" } else { b"http://" };
            let host = host.expect("same origin needs a host");
            assert!(!host.is_empty());
            assert!(origin.starts_with(scheme));
            assert!(origin[scheme.len()..].eq_ignore_ascii_case(host.as_bytes()));
        }
    }

    // The CSRF token matches itself only.
    let sessions = Sessions::new(SessionLimits::default());
    let new = sessions.create(None).expect("a session");
    let info = sessions.get(&new.token).expect("live");
    assert_eq!(info.csrf_matches(data), data == info.csrf_token.as_bytes());
    assert!(info.csrf_matches(info.csrf_token.as_bytes()));
});
