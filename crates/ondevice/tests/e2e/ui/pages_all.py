"""The collections, prompt packs, diagnostics and keys pages in one browser session (see
`ui_pages.rs`), signed in with the admin key; then each page's screenshot in the dark theme and at
360 px, no control without a name for screen readers (Chromium's accessibility tree) on any of
them, and no console problem. The keys scenario comes last: it signs out and back in with a
read-only key.
"""

from harness import BASE, KEY, accessibility_problems, click, console_problems, goto, login, run, shot, wait_testid
from pages_collections import check_collections
from pages_diagnostics import check_diagnostics
from pages_keys import check_keys
from pages_packs import check_packs


READY = {"collections": "collection-row-notes", "packs": "pack-row-summarize", "diagnostics": "diag-bundles", "keys": "keys-table"}


def scenario(driver):
    login(driver, BASE, KEY)
    out = {
        "collections": check_collections(driver),
        "packs": check_packs(driver),
        "diagnostics": check_diagnostics(driver),
    }
    click(driver, "theme-toggle")
    # A 360 px wide viewport (a window cannot be made that narrow in headless Chromium).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 360, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    narrow = {}
    unnamed = {}
    for page in ["collections", "packs", "diagnostics", "keys"]:
        goto(driver, page)
        wait_testid(driver, READY[page])
        unnamed[page] = accessibility_problems(driver)
        narrow[page] = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
        shot(driver, f"{page}-narrow-dark")
    assert all(w == 360 and s <= 360 for w, s in narrow.values()), f"pages wider than 360 px: {narrow}"
    assert not any(unnamed.values()), f"accessibility: {unnamed}"
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    click(driver, "theme-toggle")
    out["keys"] = check_keys(driver)
    problems = accessibility_problems(driver)
    assert not problems, f"keys page of a read-only session: {problems}"
    problems = console_problems(driver)
    assert not problems, problems
    return out


run("pages", scenario)
