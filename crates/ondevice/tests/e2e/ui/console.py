"""The console end to end in one browser session (see `ui.rs`): only the sign-in form without a
session; sign-in with a key; the status page (the declared workers with state, restarts, last
exit and the sandbox protection in effect as the API reports it; runtimes with their health);
the models page (details, a quantized model's provenance, a pull by catalog name from a loopback
server whose progress bar reaches 100 %, an import of a file on the daemon's machine, pin and
unpin, removal); a chat that streams "Paris"; a chat with a prompt pack and a collection
showing cited sources; an answer stopped; a slow pull cancelled on the jobs page; every page's
screenshot, dark theme and a 360 px window; a session ended behind the page's back bringing
back the sign-in form; sign-out, after which every page shows only the sign-in form again. On
every page: no control without a name for screen readers, and the page's landmarks (Chromium's
accessibility tree).

Environment: BASE, ONDEVICE_TEST_KEY (a key to sign in with), MODEL (a registered chat model),
PULL_SOURCE (a catalog name whose file is served at a measured pace) and PULL_NAME (the model it
registers), SLOW_URL (a GGUF URL served too slowly to finish) and SLOW_NAME, PAGES
(comma-separated pages to screenshot), COLLECTION and PACK (for a chat with retrieval),
RAG_QUESTION and RAG_DOCUMENT (the document its first source must be), WORKERS (comma-separated
declared workers; the last one exits with code 3 and is restarted), PROVENANCE_MODEL and
PROVENANCE_PARENT (a model made by a quantize job, and its source model), IMPORT_PATH and
IMPORT_NAME (a GGUF file on the daemon's machine, and the name to import it as).
"""

import os
import time

from selenium.webdriver.common.action_chains import ActionChains

from harness import (
    BASE,
    KEY,
    By,
    Keys,
    Select,
    accessibility_problems,
    by_testid,
    click,
    console_problems,
    fetch_json,
    fill,
    goto,
    login,
    no_horizontal_overflow,
    record_changes,
    recorded,
    run,
    shot,
    text_of,
    wait_gone,
    wait_testid,
    wait_until,
)

MODEL = os.environ["MODEL"]
PULL_SOURCE, PULL_NAME = os.environ["PULL_SOURCE"], os.environ["PULL_NAME"]
SLOW_URL, SLOW_NAME = os.environ["SLOW_URL"], os.environ["SLOW_NAME"]
COLLECTION, PACK = os.environ["COLLECTION"], os.environ["PACK"]
RAG_QUESTION, RAG_DOCUMENT = os.environ["RAG_QUESTION"], os.environ["RAG_DOCUMENT"]
PAGES = [p for p in os.environ.get("PAGES", "").split(",") if p]
WORKERS = [w for w in os.environ["WORKERS"].split(",") if w]
PROVENANCE_MODEL, PROVENANCE_PARENT = os.environ["PROVENANCE_MODEL"], os.environ["PROVENANCE_PARENT"]
IMPORT_PATH, IMPORT_NAME = os.environ["IMPORT_PATH"], os.environ["IMPORT_NAME"]


def workers_shown(driver):
    """Each declared worker's row as `/api/v1/status` reports it now (state, restarts, last exit
    code, the protection in effect: mode, each limit enforced and by what, each one missing and
    why): a summary when all match, else None (the page redraws every five seconds)."""
    code, status = fetch_json(driver, "/api/v1/status")
    assert code == 200, (code, status)
    shown = {}
    for name in WORKERS:
        w = next(w for w in status["workers"] if w["name"] == name)
        p = w["protection"]
        cell = text_of(driver, f"worker-protection-{name}")
        expected = [f"mode {p['mode']}"]
        expected += [f"{e['limit']} by {e['mechanism']}" for e in p["enforced"]]
        expected += [f"{m['limit']} missing: {m['reason']}" for m in p["missing"]]
        exit_code = (w.get("last_exit") or {}).get("code")
        if (
            not text_of(driver, f"worker-state-{name}").startswith(w["state"])
            or text_of(driver, f"worker-restarts-{name}") != str(w["restarts"])
            or (exit_code is not None and f"code {exit_code}" not in text_of(driver, f"worker-exit-{name}"))
            or not all(e in cell for e in expected)
        ):
            return None
        shown[name] = {"state": w["state"], "restarts": w["restarts"], "enforced": len(p["enforced"]), "missing": len(p["missing"])}
    return shown


def accessible(driver, page, landmarks=("banner", "navigation", "main")):
    """No control without a name on the page as shown, and its landmarks present."""
    problems = accessibility_problems(driver, landmarks)
    assert not problems, f"{page}: {problems}"


def signed_out(driver):
    """Only the sign-in form: no navigation, no page."""
    wait_testid(driver, "login-key")
    assert not driver.find_element(By.ID, "nav").is_displayed(), "navigation shown without a session"
    assert not driver.find_elements(By.CSS_SELECTOR, "section.page"), "a page shown without a session"
    assert not by_testid(driver, "logout").is_displayed()


def skip_link(driver):
    """On a freshly loaded page the first Tab reaches the skip link, which is then shown; Enter
    moves the focus to the page's main content."""
    driver.refresh()
    wait_until("the page", lambda: driver.find_element(By.CSS_SELECTOR, "main section.page h1"))
    ActionChains(driver).send_keys(Keys.TAB).perform()
    active = driver.switch_to.active_element
    assert active.text == "Skip to content", active.text
    assert active.is_displayed(), "the focused skip link is not shown"
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    assert driver.switch_to.active_element.get_attribute("id") == "main"


def keyboard_to(driver, page):
    """Reaches the page's navigation link with Tab alone (each step with a visible focus
    outline) and opens it with Enter."""
    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    ActionChains(driver).send_keys(Keys.TAB).perform()
    for _ in range(30):
        outline = driver.execute_script(
            "const e = document.activeElement; if (e === document.body) return null;"
            " const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth, e.outerHTML.slice(0, 120)]"
        )
        assert outline is None or (outline[0] != "none" and outline[1] != "0px"), f"focus not visible: {outline}"
        if driver.switch_to.active_element.get_attribute("data-testid") == f"nav-{page}":
            break
        ActionChains(driver).send_keys(Keys.TAB).perform()
    else:
        raise AssertionError(f"Tab never reached the {page} link")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait_until(f"page {page}", lambda: driver.find_element(By.CSS_SELECTOR, f'main section.page[data-page="{page}"] h1'))


def scenario(driver):
    out = {}

    # Without a session: the sign-in form only, whatever the route.
    driver.get(f"{BASE}/ui/#/models")
    signed_out(driver)
    accessible(driver, "login", landmarks=("banner", "main"))
    shot(driver, "login")
    fill(driver, "login-key", "odk_000000000000_" + "0" * 64)
    click(driver, "login-submit")
    err = wait_testid(driver, "error")
    assert err.get_attribute("data-status") == "401", err.text
    out["wrong_key"] = err.text
    signed_out(driver)

    login(driver, BASE, KEY)
    assert by_testid(driver, "logout").is_displayed()

    # Status: the version; each declared worker with its state, restarts, last exit and the
    # sandbox protection in effect, as the API reports them (the page refreshes itself); each
    # runtime with its health.
    version = wait_until("the version", lambda: text_of(driver, "status-version"))
    wait_testid(driver, "runtimes-table")
    out["version"] = version
    crashy = WORKERS[-1]
    wait_until(
        "the restarted worker's last exit",
        lambda: text_of(driver, f"worker-exit-{crashy}") == "code 3" and int(text_of(driver, f"worker-restarts-{crashy}")) >= 1,
        timeout=30,
    )
    out["workers"] = wait_until("the workers as the API reports them", lambda: workers_shown(driver), timeout=30)
    code, runtimes = fetch_json(driver, "/api/v1/runtimes")
    assert code == 200 and runtimes["runtimes"], (code, runtimes)
    for rt in runtimes["runtimes"]:
        assert text_of(driver, f"runtime-health-{rt['name']}").startswith(rt["health"]), (rt, text_of(driver, f"runtime-health-{rt['name']}"))
    out["runtimes"] = {rt["name"]: rt["health"] for rt in runtimes["runtimes"]}
    accessible(driver, "status")
    shot(driver, "status")

    skip_link(driver)

    # Models (reached with the keyboard alone): the registered model's details; then a model
    # made by a quantize job, with its provenance (the model it was made from, the receipt).
    keyboard_to(driver, "models")
    click(driver, f"model-show-{MODEL}")
    details = wait_testid(driver, "model-details")
    assert MODEL in details.text and "sha256:" in details.text, details.text
    wait_testid(driver, "model-provenance")
    click(driver, f"model-show-{PROVENANCE_MODEL}")
    wait_until("the quantized model's details", lambda: PROVENANCE_MODEL in text_of(driver, "model-details"))
    provenance = text_of(driver, "model-provenance")
    assert f"Made from\n{PROVENANCE_PARENT}" in provenance, provenance
    for field in ["output_sha256", "params", "F16"]:
        assert field in provenance, (field, provenance)
    out["provenance"] = provenance.splitlines()[:2]

    # Import a file on the daemon's machine; pin and unpin; remove after confirming.
    fill(driver, "import-path", IMPORT_PATH)
    fill(driver, "import-as", IMPORT_NAME)
    click(driver, "import-submit")
    wait_until("the import", lambda: f"imported as {IMPORT_NAME}" in text_of(driver, "import-status"))
    wait_testid(driver, f"model-row-{IMPORT_NAME}")
    for pinned in ["true", "false", "true"]:
        click(driver, f"model-pin-{IMPORT_NAME}")
        wait_until(f"pinned={pinned}", lambda: by_testid(driver, f"model-pin-{IMPORT_NAME}").get_attribute("aria-pressed") == pinned)
    assert "pinned" in text_of(driver, f"model-row-{IMPORT_NAME}"), text_of(driver, f"model-row-{IMPORT_NAME}")
    code, m = fetch_json(driver, f"/api/v1/models/{IMPORT_NAME}")
    assert code == 200 and m["pinned"] is True, (code, m)
    click(driver, f"model-remove-{IMPORT_NAME}")
    click(driver, f"model-remove-confirm-{IMPORT_NAME}")
    wait_gone(driver, f"model-row-{IMPORT_NAME}")
    code, _ = fetch_json(driver, f"/api/v1/models/{IMPORT_NAME}")
    assert code == 404, code

    # A pull by catalog name (the catalog points at the loopback server): the bar moves and
    # reaches 100 %.
    fill(driver, "pull-name", PULL_SOURCE)
    record_changes(driver, "pull-progress", "data-fraction")
    click(driver, "pull-submit")
    bar = wait_testid(driver, "pull-progress")
    wait_until("the pull to succeed", lambda: bar.get_attribute("data-state") == "succeeded", timeout=120)
    progress = driver.find_element(By.CSS_SELECTOR, '[data-testid="pull-progress"] progress')
    assert float(progress.get_attribute("value")) == 1.0, progress.get_attribute("value")
    assert "100 %" in bar.text, bar.text
    fractions = [float(f) for f in recorded(driver, "pull-progress") if f]
    assert any(0 < f < 1 for f in fractions), f"no intermediate progress seen: {fractions}"
    assert fractions == sorted(fractions), f"progress went back: {fractions}"
    out["pull_fractions"] = len(fractions)
    wait_testid(driver, f"model-row-{PULL_NAME}")
    accessible(driver, "models")
    shot(driver, "models")

    # Chat: greedy, streamed; the answer names Paris.
    goto(driver, "chat")
    Select(wait_testid(driver, "chat-model")).select_by_value(MODEL)
    fill(driver, "chat-system", "You are a helpful assistant.")
    fill(driver, "chat-temperature", "0")
    fill(driver, "chat-max-tokens", "40")
    fill(driver, "chat-input", "What is the capital of France?")
    record_changes(driver, "chat-answer")
    click(driver, "chat-send")
    wait_until("the answer to finish", lambda: by_testid(driver, "chat-answer").get_attribute("data-state") == "done", timeout=120)
    answer = driver.find_element(By.CSS_SELECTOR, '[data-testid="chat-answer"] .content').text
    assert "Paris" in answer, answer
    steps = [t for t in recorded(driver, "chat-answer") if t]
    assert len(steps) > 2, f"the answer arrived in {len(steps)} step(s), not streamed: {steps}"
    assert not by_testid(driver, "chat-stop").is_enabled(), "stop stays enabled after the answer"
    out["answer"] = answer
    accessible(driver, "chat")
    shot(driver, "chat")

    # A prompt pack and a collection: the retrieved chunks are shown as numbered sources.
    wait_until("the pack option", lambda: driver.find_element(By.CSS_SELECTOR, f'[data-testid="chat-pack"] option[value="{PACK}"]'))
    click(driver, "chat-clear")
    Select(by_testid(driver, "chat-pack")).select_by_value(PACK)
    Select(by_testid(driver, "chat-collection")).select_by_value(COLLECTION)
    fill(driver, "chat-system", "")
    fill(driver, "chat-input", RAG_QUESTION)
    by_testid(driver, "chat-input").send_keys(Keys.ENTER)  # Enter sends
    wait_until("the cited answer", lambda: by_testid(driver, "chat-answer").get_attribute("data-state") in ("done", "failed"), timeout=120)
    assert by_testid(driver, "chat-answer").get_attribute("data-state") == "done", text_of(driver, "chat-output")
    sources = driver.find_elements(By.CSS_SELECTOR, '[data-testid="chat-answer"] [data-testid="chat-source"]')
    assert sources, "no sources shown"
    out["sources"] = [s.get_attribute("data-document") for s in sources]
    assert RAG_DOCUMENT in sources[0].text, sources[0].text
    shot(driver, "chat-sources")
    Select(by_testid(driver, "chat-pack")).select_by_value("")
    Select(by_testid(driver, "chat-collection")).select_by_value("")

    # Stop: a long answer aborted at once.
    fill(driver, "chat-max-tokens", "400")
    fill(driver, "chat-input", "Write a long story about a lighthouse keeper.")
    click(driver, "chat-send")
    click(driver, "chat-stop")
    wait_testid(driver, "chat-stopped")

    # A slow pull started on the models page, cancelled on the jobs page.
    goto(driver, "models")
    fill(driver, "pull-name", SLOW_URL)
    fill(driver, "pull-as", SLOW_NAME)
    click(driver, "pull-submit")
    job = wait_testid(driver, "pull-progress").get_attribute("data-job")
    goto(driver, "jobs")
    wait_until("the slow pull to run", lambda: driver.find_element(By.CSS_SELECTOR, f'[data-testid="job-row-{job}"]').get_attribute("data-state") == "running")
    click(driver, f"job-cancel-{job}")
    wait_until("the job to be cancelled", lambda: text_of(driver, f"job-state-{job}") == "cancelled", timeout=30)
    wait_gone(driver, f"job-cancel-{job}")
    out["cancelled"] = job
    accessible(driver, "jobs")
    shot(driver, "jobs")

    # Every other page, for review; then dark theme and a narrow window.
    for page in PAGES:
        goto(driver, page)
        time.sleep(0.5)  # let the page's first requests draw (for the picture only)
        shot(driver, f"{page}-empty")
    goto(driver, "status")
    theme = lambda: driver.execute_script("return document.documentElement.dataset.theme")  # noqa: E731
    click(driver, "theme-toggle")
    if theme() != "dark":  # the system preferred dark: the first press chose light
        click(driver, "theme-toggle")
    assert theme() == "dark" and by_testid(driver, "theme-toggle").get_attribute("aria-pressed") == "true"
    shot(driver, "status-dark")
    driver.refresh()
    wait_until("the theme to persist", lambda: theme() == "dark")
    driver.set_window_size(360, 800)
    narrow = {}
    for page in ["status", "models", "chat", "jobs"]:
        goto(driver, page)
        narrow[page] = no_horizontal_overflow(driver)
        shot(driver, f"{page}-narrow")
    assert all(narrow.values()), f"pages wider than 360 px: {narrow}"
    driver.set_window_size(1280, 900)

    # A session that ends behind the page's back (expired, revoked, or signed out in another
    # tab): the page's next request brings back the sign-in form, saying why.
    goto(driver, "chat")
    ended = driver.execute_async_script(
        """const done = arguments[0];
        fetch('/api/v1/ui/session', {credentials: 'same-origin'}).then(r => r.json())
          .then(s => fetch('/api/v1/ui/session', {method: 'DELETE', credentials: 'same-origin', headers: {'X-CSRF-Token': s.csrf_token}}))
          .then(r => done(r.status), e => done(String(e)))"""
    )
    assert ended == 204, ended
    click(driver, "nav-models")
    signed_out(driver)
    assert "Your session ended; sign in again." in driver.find_element(By.ID, "main").text
    login(driver, BASE, KEY)

    # Sign-out: the session ends; every route shows the sign-in form; the cookie no longer works.
    click(driver, "logout")
    signed_out(driver)
    driver.get(f"{BASE}/ui/#/chat")
    signed_out(driver)
    status = driver.execute_async_script(
        "const done = arguments[0]; fetch('/api/v1/status', {credentials: 'same-origin'}).then(r => done(r.status), e => done(String(e)))"
    )
    assert status == 401, status
    problems = console_problems(driver)
    assert not problems, problems
    return out


run("console", scenario)
