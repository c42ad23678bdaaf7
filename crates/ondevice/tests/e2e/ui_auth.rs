//! The web console's sign-in against the real daemon: `ondevice ui` prints a login link that
//! works once, the session cookie it yields carries the key's scopes over HTTP and the
//! WebSocket, a cross-site form post is refused, and a disabled console or a stopped daemon get
//! clear errors. (Browser scenarios are `ui::` and `ui_pages::`.)

use reqwest::header::{CONTENT_TYPE, COOKIE, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Daemon, Home, describe, ws_connect};

/// Signs in with a login token like the console's page does; the cookie (`name=value`) and the
/// session JSON, or the refusal's status and body.
async fn redeem(daemon: &Daemon, token: &str) -> Result<(String, Value), (StatusCode, Value)> {
    let resp = daemon
        .request(Method::POST, "/api/v1/ui/session", None)
        .header(ORIGIN, format!("http://{}", daemon.addr()))
        .json(&json!({ "login_token": token }))
        .send()
        .await
        .expect("POST /api/v1/ui/session");
    let status = resp.status();
    let cookie = resp.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match (status, cookie) {
        (StatusCode::OK, Some(c)) => Ok((c.split(';').next().expect("cookie pair").to_owned(), body)),
        _ => Err((status, body)),
    }
}

/// The token of a `…/ui/#login=TOKEN` link printed for `daemon`.
fn token_of(daemon: &Daemon, url: &str) -> String {
    let prefix = format!("http://{}/ui/#login=", daemon.addr());
    url.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("{url:?} is not a login link of {prefix}")).to_owned()
}

#[tokio::test]
async fn ondevice_ui_prints_a_link_that_signs_in_once() {
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run(&["ui"]);
    assert!(out.status.success(), "ondevice ui: {}", describe(&out));
    let url = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(url.lines().count(), 1, "only the link on stdout: {url:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("once"), "a hint on stderr");
    let token = token_of(&daemon, &url);

    // The page the link opens is served, then the page trades the token for a session.
    let resp = daemon.http().get(url.trim()).send().await.expect("GET link");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let (cookie, session) = redeem(&daemon, &token).await.expect("sign in with the link");
    assert_eq!(session["key_name"], "bootstrap");
    assert_eq!(session["scopes"], json!(["admin"]));
    let status = daemon.http().get(daemon.url("/api/v1/status")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::OK, "the cookie authenticates API reads");

    // Single use.
    let (status, body) = redeem(&daemon, &token).await.expect_err("a used link");
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));

    // --json.
    let out = daemon.home().run_ok(&["ui", "--json"]);
    let link: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(token_of(&daemon, link["url"].as_str().unwrap()), link["token"].as_str().unwrap());
    assert!(link["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{link}");
}

#[tokio::test]
async fn a_link_made_with_a_read_key_has_only_read() {
    let daemon = Daemon::start(Home::new());
    let reader = daemon.key(&["read"]).await;
    let out = daemon.home().run_with(&["ui"], &[("ONDEVICE_API_KEY", reader.secret.as_str())]);
    assert!(out.status.success(), "{}", describe(&out));
    let token = token_of(&daemon, &String::from_utf8(out.stdout).unwrap());
    let (cookie, session) = redeem(&daemon, &token).await.expect("sign in");
    assert_eq!((session["key_id"].as_str(), &session["scopes"]), (Some(reader.id.as_str()), &json!(["read"])));
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    let from_page = |method: Method, path: &str| {
        daemon
            .request(method, path, None)
            .header(COOKIE, &cookie)
            .header(ORIGIN, format!("http://{}", daemon.addr()))
            .header("x-csrf-token", &csrf)
    };
    let resp = from_page(Method::GET, "/api/v1/keys").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "the keys page's API needs admin");
    let resp = from_page(Method::GET, "/api/v1/models").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Revoking the key ends the session.
    daemon.revoke(&reader.id).await;
    let resp = from_page(Method::GET, "/api/v1/models").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_websocket_takes_the_cookie_only_from_the_console_origin() {
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run_ok(&["ui"]);
    let (cookie, _) = redeem(&daemon, &token_of(&daemon, &out)).await.expect("sign in");
    let origin = format!("http://{}", daemon.addr());
    let (mut ws, _) = ws_connect(&daemon, &[("cookie", cookie.clone()), ("origin", origin)])
        .await
        .expect("same-origin upgrade with the cookie");
    let hello = crate::common::ws_next(&mut ws, std::time::Duration::from_secs(10)).await.json();
    assert_eq!(hello["type"], "hello");
    for headers in [
        vec![("cookie", cookie.clone())],
        vec![("cookie", cookie.clone()), ("origin", "http://evil.example".to_owned())],
    ] {
        let refused = ws_connect(&daemon, &headers).await.err();
        assert_eq!(refused, Some(StatusCode::FORBIDDEN), "{headers:?}");
    }
}

#[tokio::test]
async fn a_cross_site_form_post_is_refused() {
    let daemon = Daemon::start(Home::new());
    let out = daemon.home().run_ok(&["ui"]);
    let (cookie, _) = redeem(&daemon, &token_of(&daemon, &out)).await.expect("sign in");
    // What a form on another site posts (were the cookie not already withheld by SameSite).
    let resp = daemon
        .request(Method::POST, "/api/v1/keys", None)
        .header(COOKIE, &cookie)
        .header(ORIGIN, "http://evil.example")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("name=pwned&scopes=admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "csrf_failed");
    let (_, keys) = daemon.get("/api/v1/keys", Some(daemon.admin_key())).await;
    assert!(keys.as_array().unwrap().iter().all(|k| k["name"] != "pwned"), "{keys}");
}

#[tokio::test]
async fn clear_errors_when_the_console_is_off_or_the_daemon_is_not_running() {
    let daemon = Daemon::with_config("[ui]\nenabled = false\n");
    let out = daemon.home().run(&["ui"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the web console is disabled ([ui] enabled = false)"), "{err}");
    let (status, body) = daemon.get("/ui/", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    let home = Home::new();
    let out = home.run_with(&["ui"], &[("ONDEVICE_API_KEY", daemon.admin_key()), ("ONDEVICE_LISTEN", "127.0.0.1:1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the daemon") && err.contains("is it running?"), "{err}");
}
