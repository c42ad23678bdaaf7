"""The console end to end in one browser session (see `ui.rs`): only the sign-in form without a
session; sign-in with a key; the status page; the models page (details with provenance, a pull
from a loopback server whose progress bar reaches 100 %); a chat that streams "Paris"; a chat
with a prompt pack and a collection showing cited sources; an answer stopped; a slow pull
cancelled on the jobs page; every page's screenshot, dark theme and a 360 px window;
sign-out, after which every page shows only the sign-in form again.

Environment: BASE, ONDEVICE_TEST_KEY (a key to sign in with), MODEL (a registered chat model),
PULL_URL (a GGUF served at a measured pace), PULL_NAME, SLOW_URL (one served too slowly to
finish), SLOW_NAME, PAGES (comma-separated pages to screenshot), COLLECTION and PACK (for a
chat with retrieval), RAG_QUESTION and RAG_DOCUMENT (the document its first source must be).
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
    by_testid,
    click,
    console_problems,
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
PULL_URL, PULL_NAME = os.environ["PULL_URL"], os.environ["PULL_NAME"]
SLOW_URL, SLOW_NAME = os.environ["SLOW_URL"], os.environ["SLOW_NAME"]
COLLECTION, PACK = os.environ["COLLECTION"], os.environ["PACK"]
RAG_QUESTION, RAG_DOCUMENT = os.environ["RAG_QUESTION"], os.environ["RAG_DOCUMENT"]
PAGES = [p for p in os.environ.get("PAGES", "").split(",") if p]


def signed_out(driver):
    """Only the sign-in form: no navigation, no page."""
    wait_testid(driver, "login-key")
    assert not driver.find_element(By.ID, "nav").is_displayed(), "navigation shown without a session"
    assert not driver.find_elements(By.CSS_SELECTOR, "section.page"), "a page shown without a session"
    assert not by_testid(driver, "logout").is_displayed()


def keyboard_to(driver, page):
    """Reaches the page's navigation link with Tab alone and opens it with Enter."""
    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    ActionChains(driver).send_keys(Keys.TAB).perform()
    for _ in range(30):
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
    shot(driver, "login")
    fill(driver, "login-key", "odk_000000000000_" + "0" * 64)
    click(driver, "login-submit")
    err = wait_testid(driver, "error")
    assert err.get_attribute("data-status") == "401", err.text
    out["wrong_key"] = err.text
    signed_out(driver)

    login(driver, BASE, KEY)
    assert by_testid(driver, "logout").is_displayed()

    # Status.
    version = wait_until("the version", lambda: text_of(driver, "status-version"))
    wait_testid(driver, "runtimes-table")
    out["version"] = version
    shot(driver, "status")

    # Models (reached with the keyboard alone): the registered model, its details with provenance.
    keyboard_to(driver, "models")
    click(driver, f"model-show-{MODEL}")
    details = wait_testid(driver, "model-details")
    assert MODEL in details.text and "sha256:" in details.text, details.text
    wait_testid(driver, "model-provenance")

    # A pull from the loopback server: the bar moves and reaches 100 %.
    fill(driver, "pull-name", PULL_URL)
    fill(driver, "pull-as", PULL_NAME)
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
    shot(driver, "chat")

    # A prompt pack and a collection: the retrieved chunks are shown as numbered sources.
    wait_until("the pack option", lambda: driver.find_element(By.CSS_SELECTOR, f'[data-testid="chat-pack"] option[value="{PACK}"]'))
    click(driver, "chat-clear")
    Select(by_testid(driver, "chat-pack")).select_by_value(PACK)
    Select(by_testid(driver, "chat-collection")).select_by_value(COLLECTION)
    fill(driver, "chat-system", "")
    fill(driver, "chat-input", RAG_QUESTION)
    click(driver, "chat-send")
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
