"""Keys page: an admin creates a key (its secret shown once, copied, and working), revokes it
after confirming (the secret is then refused); a session of a key without the admin scope has no
Keys entry, the page says it needs the admin scope, and the API answers its cookie 403.

Environment: READ_KEY (a key with the read scope only).
"""

import json
import os
import urllib.error
import urllib.request

from harness import BASE, By, click, fill, goto, login, shot, text_of, wait_gone, wait_testid, wait_until


def status_with(key):
    req = urllib.request.Request(f"{BASE}/api/v1/status", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def check_keys(driver):
    out = {}
    goto(driver, "keys")
    fill(driver, "key-name", "console-made")
    click(driver, "key-scope-infer")
    click(driver, "key-create")
    secret = wait_testid(driver, "key-secret").get_attribute("value")
    assert secret.startswith("odk_"), secret
    click(driver, "key-copy")
    wait_until("copied", lambda: text_of(driver, "key-copied"))
    key_id = secret.split("_")[1]
    row = wait_testid(driver, f"key-row-{key_id}")
    assert "console-made" in row.text and "read" in row.text and "infer" in row.text, row.text
    out["works_before"] = status_with(secret)
    assert out["works_before"] == 200, out
    shot(driver, "keys")
    click(driver, "key-secret-dismiss")
    wait_gone(driver, "key-secret")
    click(driver, f"key-revoke-{key_id}")
    click(driver, f"key-revoke-confirm-{key_id}")
    wait_gone(driver, f"key-row-{key_id}")
    click(driver, "keys-show-revoked")
    row = wait_testid(driver, f"key-row-{key_id}")
    assert row.get_attribute("data-revoked") == "true", row.text
    out["works_after"] = status_with(secret)
    assert out["works_after"] == 401, out
    out["key_id"] = key_id

    # Revoking the last admin key is refused by the API, and the refusal is shown.
    own = driver.find_element(By.XPATH, "//th[contains(., '(this session)')]/ancestor::tr").get_attribute("data-testid").removeprefix("key-row-")
    click(driver, f"key-revoke-{own}")
    click(driver, f"key-revoke-confirm-{own}")
    err = wait_testid(driver, "error")
    assert err.get_attribute("data-status") == "409", err.text
    out["last_admin"] = err.text

    # A read-only session: no Keys entry, the page needs the admin scope, the API says 403.
    click(driver, "logout")
    wait_testid(driver, "login-key")
    login(driver, BASE, os.environ["READ_KEY"])
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="nav-keys"]'), "a Keys entry for a read key"
    driver.get(f"{BASE}/ui/#/keys")
    needs = wait_testid(driver, "needs-scope")
    assert "admin" in needs.text, needs.text
    out["needs_scope"] = needs.text
    status = driver.execute_async_script(
        "const done = arguments[0]; fetch('/api/v1/keys', {credentials: 'same-origin'}).then(r => r.json().then(b => done([r.status, b.error && b.error.code])), e => done(String(e)))"
    )
    assert status[0] == 403, status
    out["api"] = status
    shot(driver, "keys-denied")
    return out
