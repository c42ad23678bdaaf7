"""Browser harness of the web console's end-to-end tests.

A real headless Chromium (Debian `chromium` + `chromium-driver`) driven by Selenium, against the
real daemon the Rust test started (`BASE`). Nothing is downloaded at run time: the driver is
`/usr/bin/chromedriver` and `SE_OFFLINE=true` keeps Selenium Manager offline.

Scenarios (`*.py` beside this file) run as `python3 -c SCRIPT` with this directory on
`PYTHONPATH` (see `ui.rs`) and print one JSON value as their last line (`result`). Wrap a
scenario in `run(name, fn)` so a failure leaves a screenshot, the page's text and the browser's
console log behind under `$ONDEVICE_UI_SCREENSHOTS`.
"""

import base64
import json
import os
import sys
import time
import traceback

os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    JavascriptException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = os.environ.get("ONDEVICE_UI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ONDEVICE_UI_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = float(os.environ.get("ONDEVICE_UI_WAIT", "60"))

__all__ = [
    "By",
    "Keys",
    "Select",
    "browser",
    "login",
    "shot",
    "result",
    "run",
    "by_testid",
    "wait_testid",
    "wait_gone",
    "wait_until",
    "click",
    "fill",
    "goto",
    "text_of",
    "console_problems",
    "record_changes",
    "recorded",
    "no_horizontal_overflow",
    "fetch_json",
    "accessibility_problems",
    "BASE",
    "KEY",
]

BASE = os.environ.get("BASE", "").rstrip("/")
KEY = os.environ.get("ONDEVICE_TEST_KEY", "")


def browser(width=1280, height=900):
    """A headless Chromium (`--no-sandbox` only when running as root, as CI containers do)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.add_argument("--headless=new")
    opts.add_argument(f"--window-size={width},{height}")
    opts.add_argument("--disable-dev-shm-usage")
    opts.add_argument("--disable-gpu")
    opts.add_argument("--no-first-run")
    opts.add_argument("--no-default-browser-check")
    opts.add_argument("--disable-extensions")
    opts.add_argument("--disable-background-networking")
    opts.add_argument("--disable-sync")
    opts.add_argument("--disable-component-update")
    opts.add_argument("--no-proxy-server")
    opts.add_argument("--lang=en-US")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        opts.add_argument("--no-sandbox")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(CHROMEDRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def screenshots_dir():
    d = os.environ.get("ONDEVICE_UI_SCREENSHOTS") or os.path.join(os.getcwd(), "ui-screenshots")
    os.makedirs(d, exist_ok=True)
    return d


def shot(driver, name):
    """Saves a PNG of the whole page (beyond the window's height) as
    `$ONDEVICE_UI_SCREENSHOTS/NAME.png`; returns its path."""
    path = os.path.join(screenshots_dir(), f"{name}.png")
    try:
        m = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = m.get("cssContentSize") or m["contentSize"]
        width = driver.execute_script("return window.innerWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": min(size["height"], 6000), "scale": 1}
        png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        with open(path, "wb") as f:
            f.write(base64.b64decode(png["data"]))
    except WebDriverException:
        driver.save_screenshot(path)
    return path


def result(value):
    """Prints the scenario's result as the last line (what `common::python` parses)."""
    sys.stdout.flush()
    print(json.dumps(value))


def by_testid(driver, testid):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def wait_until(what, fn, timeout=WAIT, interval=0.1):
    """Calls `fn` until it returns a truthy value (exceptions of a page being redrawn count as
    falsy); fails with `what` and the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (NoSuchElementException, StaleElementReferenceException, JavascriptException) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def wait_testid(driver, testid, timeout=WAIT, visible=True):
    """The element with this `data-testid`, once it exists (and is displayed)."""

    def find():
        e = by_testid(driver, testid)
        return e if (not visible or e.is_displayed()) else None

    return wait_until(f'[data-testid="{testid}"]', find, timeout)


def wait_gone(driver, testid, timeout=WAIT):
    def gone():
        found = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        return not any(e.is_displayed() for e in found)

    wait_until(f'[data-testid="{testid}"] to disappear', gone, timeout)


def click(driver, testid, timeout=WAIT):
    e = wait_until(f"{testid} enabled", lambda: (lambda x: x if x.is_enabled() else None)(wait_testid(driver, testid, timeout)), timeout)
    e.click()
    return e


def fill(driver, testid, text):
    e = wait_testid(driver, testid)
    e.clear()
    e.send_keys(text)
    return e


def text_of(driver, testid):
    return by_testid(driver, testid).text


def goto(driver, page, timeout=WAIT):
    """Follows the navigation link to `#/PAGE` and waits for that page's section."""
    click(driver, f"nav-{page}", timeout)
    return wait_until(
        f"page {page}",
        lambda: driver.find_element(By.CSS_SELECTOR, f'main section.page[data-page="{page}"] h1'),
        timeout,
    )


def login(driver, base, key):
    """Opens the console, signs in with `key` and waits for the navigation."""
    driver.get(f"{base}/ui/")
    fill(driver, "login-key", key)
    click(driver, "login-submit")
    wait_testid(driver, "nav-status")
    wait_until("the status page", lambda: driver.find_element(By.CSS_SELECTOR, 'section.page[data-page="status"] h1'))


def console_problems(driver):
    """Console messages that mean a bug: a Content-Security-Policy violation or an uncaught
    error. (Failed requests the console logs on purpose, such as the 401 of the session check
    before sign-in, are not problems.)"""
    problems = []
    for entry in driver.get_log("browser"):
        msg = entry.get("message", "")
        if "Content Security Policy" in msg or "Uncaught" in msg or "SyntaxError" in msg or "TypeError" in msg:
            problems.append(msg)
        elif entry.get("level") == "SEVERE" and "Failed to load resource" not in msg:
            problems.append(msg)
    return problems


def record_changes(driver, testid, attribute=None):
    """Starts recording, in the page, every value the element with `testid` takes: its
    `attribute` (or its text). Read them with `recorded`."""
    driver.execute_script(
        """
        const [testid, attribute] = arguments;
        window.__recorded = window.__recorded || {};
        const seen = (window.__recorded[testid] = []);
        const read = () => {
          const e = document.querySelector(`[data-testid="${testid}"]`);
          if (!e) return;
          const v = attribute ? e.getAttribute(attribute) : e.textContent;
          if (seen[seen.length - 1] !== v) seen.push(v);
        };
        new MutationObserver(read).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
        read();
        """,
        testid,
        attribute,
    )


def recorded(driver, testid):
    return driver.execute_script("return (window.__recorded || {})[arguments[0]] || []", testid)


def no_horizontal_overflow(driver):
    """Whether the page fits the window's width (tables scroll inside their own box)."""
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def fetch_json(driver, path):
    """`GET path` from the page with its session cookie: `[status, JSON body or None]`."""
    return driver.execute_async_script(
        """const [path, done] = arguments;
        fetch(path, {credentials: 'same-origin'})
          .then(async r => done([r.status, await r.json().catch(() => null)]), e => done([0, String(e)]));""",
        path,
    )


# Roles a person operates (or reads progress from): each needs a name a screen reader announces.
NAMED_ROLES = {
    "button", "link", "textbox", "searchbox", "combobox", "listbox", "checkbox", "radio", "switch",
    "spinbutton", "slider", "progressbar", "tab", "menuitem",
}


def accessibility_problems(driver, landmarks=("banner", "navigation", "main")):
    """What a screen reader would miss on the page as shown, from Chromium's own accessibility
    tree (the names it computes from labels, aria-label, aria-labelledby and content): every
    visible control without a name, and each landmark in `landmarks` that is missing. Returns
    a list of descriptions (empty when all is well)."""
    driver.execute_cdp_cmd("Accessibility.enable", {})
    try:
        nodes = driver.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    finally:
        driver.execute_cdp_cmd("Accessibility.disable", {})
    problems = []
    roles = set()
    for n in nodes:
        if n.get("ignored"):
            continue
        role = (n.get("role") or {}).get("value", "")
        roles.add(role)
        name = str((n.get("name") or {}).get("value", "")).strip()
        if role in NAMED_ROLES and not name:
            what = role
            if "backendDOMNodeId" in n:
                try:
                    node = driver.execute_cdp_cmd("DOM.describeNode", {"backendNodeId": n["backendDOMNodeId"]})["node"]
                    attrs = node.get("attributes", [])
                    what = f"{role} <{node.get('localName')} {' '.join(f'{k}={v!r}' for k, v in zip(attrs[::2], attrs[1::2]))}>"
                except WebDriverException:
                    pass
            problems.append(f"no accessible name: {what}")
    for landmark in landmarks:
        if landmark not in roles:
            problems.append(f"no {landmark} landmark")
    return problems


def run(name, scenario):
    """Runs `scenario(driver)` in a fresh browser and prints its result; on failure saves
    `NAME-failure.png`, prints the page's text and console log to stderr and exits 1."""
    driver = browser()
    try:
        value = scenario(driver)
    except BaseException:
        traceback.print_exc()
        try:
            print(f"screenshot: {shot(driver, f'{name}-failure')}", file=sys.stderr)
            print(f"url: {driver.current_url}", file=sys.stderr)
            print("--- page text\n" + driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
            print("--- console\n" + "\n".join(e.get("message", "") for e in driver.get_log("browser")), file=sys.stderr)
        except WebDriverException as e:
            print(f"(no failure details: {e})", file=sys.stderr)
        driver.quit()
        sys.exit(1)
    driver.quit()
    result(value)
