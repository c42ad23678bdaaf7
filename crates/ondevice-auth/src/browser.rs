//! What a browser sends that the console's session relies on: the session cookie among a
//! request's `Cookie` headers, and whether an `Origin` names the daemon itself. Both read bytes
//! any web page can make a browser send, so they are plain, total functions over those bytes
//! (fuzzed by the `browser` target).

/// The console's session cookie name.
pub const SESSION_COOKIE: &str = "ondevice_session";

/// The value of the `ondevice_session` cookie among the values of a request's `Cookie` headers
/// (`name=value` pairs separated by `;`, optionally quoted); the first non-empty one wins. Values
/// that are not UTF-8 are skipped. Never returns an empty string or one containing `;`.
pub fn session_cookie<'a>(cookie_headers: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a str> {
    cookie_headers
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .find(|v| !v.is_empty())
}

/// Whether `origin` (an `Origin` header's bytes) is the daemon as the request reached it: the
/// scheme the daemon serves (`https` under TLS) and exactly the request's host and port
/// (`host`, from `Host` or the HTTP/2 authority; ASCII case-insensitive). No host, a non-UTF-8
/// origin or `null` is never the same origin.
pub fn same_origin(origin: &[u8], tls: bool, host: Option<&str>) -> bool {
    let scheme: &[u8] = if tls { b"https://" } else { b"http://" };
    match (origin.strip_prefix(scheme), host) {
        (Some(authority), Some(host)) => !host.is_empty() && authority.eq_ignore_ascii_case(host.as_bytes()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let none: [&[u8]; 0] = [];
        assert_eq!(session_cookie(none), None);
        assert_eq!(session_cookie([&b"theme=dark; ondevice_session=abc123 ; x=1"[..]]), Some("abc123"));
        assert_eq!(session_cookie([&b"a=b"[..], b"ondevice_session=zz"]), Some("zz"));
        assert_eq!(session_cookie([&b"ondevice_session=\"q1\""[..]]), Some("q1"));
        assert_eq!(session_cookie([&b"ondevice_session=; xondevice_session=q"[..]]), None);
        assert_eq!(session_cookie([&b"ondevice_session=; ondevice_session=second"[..]]), Some("second"));
        assert_eq!(session_cookie([&b"\xff\xfe"[..], b"ondevice_session=ok"]), Some("ok"));
        assert_eq!(session_cookie([&b"ONDEVICE_SESSION=upper"[..]]), None, "cookie names are case-sensitive");
    }

    #[test]
    fn only_the_daemons_own_origin_is_the_same() {
        assert!(same_origin(b"http://127.0.0.1:7733", false, Some("127.0.0.1:7733")));
        assert!(same_origin(b"https://LOCALHOST:7733", true, Some("localhost:7733")));
        for (origin, tls, host) in [
            (&b"https://127.0.0.1:7733"[..], false, Some("127.0.0.1:7733")),
            (b"http://127.0.0.1:7733", true, Some("127.0.0.1:7733")),
            (b"http://127.0.0.1:7734", false, Some("127.0.0.1:7733")),
            (b"http://127.0.0.1:7733.evil.example", false, Some("127.0.0.1:7733")),
            (b"null", false, Some("127.0.0.1:7733")),
            (b"http://", false, Some("")),
            (b"http://127.0.0.1:7733", false, None),
            (b"http://\xff", false, Some("\u{ff}")),
        ] {
            assert!(!same_origin(origin, tls, host), "{:?} {tls} {host:?}", String::from_utf8_lossy(origin));
        }
    }
}
