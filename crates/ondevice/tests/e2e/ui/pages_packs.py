"""Prompt packs page: publish two versions from the form, show the second rendered with variables
and its token count, the diff between the versions, roll back to the first (the list then
says the bare name serves 1.0.0), and delete the second.
"""

from harness import By, Select, click, fill, goto, shot, text_of, wait_gone, wait_testid, wait_until

PACK = """name = "summarize"
version = "{version}"
description = "Summarize a text"
[variables.text]
required = true
[variables.style]
default = "brief"
[[messages]]
role = "system"
template = "You {verb} in a {{{{ style }}}} style."
[[messages]]
role = "user"
template = "{{{{ text }}}}"
"""


def check_packs(driver):
    out = {}
    goto(driver, "packs")
    wait_testid(driver, "packs-empty")
    for version, verb in [("1.0.0", "summarize"), ("1.1.0", "condense")]:
        box = wait_testid(driver, "pack-publish")
        if not box.get_attribute("open"):
            box.find_element(By.TAG_NAME, "summary").click()
        fill(driver, "pack-publish-toml", PACK.format(version=version, verb=verb))
        click(driver, "pack-publish-submit")
        wait_until(f"{version} published", lambda: f"summarize@{version}" in text_of(driver, "pack-publish-result"))
        wait_until(f"{version} served", lambda: text_of(driver, "pack-current-summarize") == version)

    # A required variable left out: the API's 400 is shown.
    wait_testid(driver, "pack-version-1.1.0")
    driver.execute_script("document.querySelector('[data-testid=\"pack-var-text\"]').removeAttribute('required')")
    click(driver, "pack-render-submit")
    err = wait_until("the render error", lambda: driver.find_element(By.CSS_SELECTOR, '[data-testid="pack-render-output"] [data-testid="error"]'))
    assert err.get_attribute("data-status") == "400", err.text

    # Render the newest version with variables: messages and a token count.
    Select(wait_testid(driver, "pack-render-version")).select_by_value("1.1.0")
    fill(driver, "pack-var-text", "The quick brown fox jumps over the lazy dog.")
    fill(driver, "pack-var-style", "formal")
    click(driver, "pack-render-submit")
    tokens = wait_testid(driver, "pack-render-tokens").text
    n = int(tokens.split()[0])
    assert n > 10, tokens
    messages = [m.text for m in driver.find_elements(By.CSS_SELECTOR, '[data-testid="pack-render-message"]')]
    assert "You condense in a formal style." in messages[0], messages
    assert "The quick brown fox" in messages[1], messages
    out["tokens"] = n

    # Diff 1.0.0 → 1.1.0.
    Select(wait_testid(driver, "pack-diff-from")).select_by_value("1.0.0")
    Select(wait_testid(driver, "pack-diff-to")).select_by_value("1.1.0")
    click(driver, "pack-diff-submit")
    diff = wait_until("the diff", lambda: driver.find_element(By.CSS_SELECTOR, '[data-testid="pack-diff-output"] pre.diff'))
    removed = [e.text for e in diff.find_elements(By.TAG_NAME, "del")]
    added = [e.text for e in diff.find_elements(By.TAG_NAME, "ins")]
    assert '-template = "You summarize in a {{ style }} style."' in removed, removed
    assert '+template = "You condense in a {{ style }} style."' in added, added
    shot(driver, "packs")

    # Roll back to 1.0.0.
    Select(wait_testid(driver, "pack-rollback-version")).select_by_value("1.0.0")
    click(driver, "pack-rollback-submit")
    wait_until("1.0.0 served", lambda: text_of(driver, "pack-current-summarize") == "1.0.0")
    out["served"] = "1.0.0"

    # Delete 1.1.0 after confirming: the pack keeps 1.0.0 only.
    wait_testid(driver, "pack-version-1.1.0")
    click(driver, "pack-delete-1.1.0")
    click(driver, "pack-delete-confirm-1.1.0")
    wait_gone(driver, "pack-version-1.1.0")
    wait_testid(driver, "pack-version-1.0.0")
    wait_until("one version left", lambda: "1.1.0" not in text_of(driver, "pack-row-summarize"))
    return out
