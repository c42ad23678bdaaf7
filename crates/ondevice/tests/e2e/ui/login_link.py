"""The one-time sign-in link of `ondevice ui` and the CSRF guard, in a real browser (see `ui.rs`).

The link (`LOGIN_URL`, made for a `read` key) signs in without typing, the token leaves the
address bar at once, and the session has the key's scopes. After signing out, the same link no
longer works. Signed in again with an admin key (`ONDEVICE_TEST_KEY`), a page of another origin
(another port on 127.0.0.1: the same site, so the SameSite=Strict cookie is sent) posts a form
to `/api/v1/keys`: the daemon refuses it (403 `csrf_failed`) and the session still works.
"""

import http.server
import json
import os
import threading

from harness import BASE, KEY, By, by_testid, click, console_problems, login, run, shot, wait_testid, wait_until

LOGIN_URL = os.environ["LOGIN_URL"]

ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain">
<input type="hidden" name='{{"name":"csrf","scopes":["admin"],"x":"' value='"}}'>
</form>
<script>document.getElementById("f").submit();</script>
</body></html>"""


def attacker():
    """A page on another port of 127.0.0.1 that posts a form to the daemon as soon as it loads."""
    page = ATTACK.format(target=f"{BASE}/api/v1/keys").encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def session(driver):
    """`GET /api/v1/ui/session` from the page: (status, JSON)."""
    return driver.execute_async_script(
        """const done = arguments[0];
        fetch('/api/v1/ui/session', {credentials: 'same-origin'})
          .then(async r => done([r.status, await r.json().catch(() => null)]), e => done([0, String(e)]));"""
    )


def scenario(driver):
    out = {}
    driver.get(LOGIN_URL)
    wait_testid(driver, "nav-status")
    wait_until("the token to leave the URL", lambda: "login=" not in driver.current_url)
    assert driver.current_url.endswith("#/status"), driver.current_url
    assert "login=" not in driver.execute_script("return location.href + document.referrer")
    status, body = session(driver)
    assert status == 200, (status, body)
    out["link_scopes"] = body["scopes"]
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="nav-keys"]'), "a read session offers the keys page"
    shot(driver, "login-link")

    # Signed out, the link is spent.
    click(driver, "logout")
    wait_testid(driver, "login-key")
    driver.get(LOGIN_URL)
    err = wait_testid(driver, "error")
    assert err.get_attribute("data-status") == "401", err.text
    wait_testid(driver, "login-key")
    assert "login=" not in driver.current_url, driver.current_url
    out["reused_link"] = err.text

    # A cross-site form post with the admin session's cookie is refused.
    login(driver, BASE, KEY)
    server = attacker()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_until("the form post", lambda: driver.current_url.startswith(f"{BASE}/api/v1/keys"))
        status = driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
        body = json.loads(driver.find_element(By.TAG_NAME, "body").text)
        out["cross_site"] = [status, body["error"]["code"]]
    finally:
        server.shutdown()
    driver.get(f"{BASE}/ui/")
    wait_testid(driver, "nav-keys")
    status, _ = session(driver)
    assert status == 200, status
    problems = console_problems(driver)
    assert not problems, problems
    return out


run("login-link", scenario)
