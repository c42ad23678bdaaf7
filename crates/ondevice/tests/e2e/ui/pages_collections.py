"""Collections page: create a collection on the real embedding model (chunking settings from the
form), add two files read by the browser (upserted with progress), index a directory on the
daemon's machine (an `index` job whose bar reaches 100 %), search (hits with score, chunk text and
source, the right file first), remove a document by id, and delete a second collection after confirming.

Environment: EMBED_MODEL (a registered embedding model), UPLOAD_DIR (files to upload), DOCS_DIR
(a directory inside `[vector] index_roots`).
"""

import os

from harness import By, click, fill, goto, shot, text_of, wait_gone, wait_testid, wait_until


def check_collections(driver):
    model = os.environ["EMBED_MODEL"]
    uploads = os.environ["UPLOAD_DIR"]
    docs = os.environ["DOCS_DIR"]
    out = {}
    goto(driver, "collections")
    wait_testid(driver, "collections-empty")
    # With no collection yet, the form is open.
    fill(driver, "collection-name", "notes")
    fill(driver, "collection-model", model)
    fill(driver, "collection-chunk-tokens", "128")
    fill(driver, "collection-chunk-overlap", "16")
    click(driver, "collection-create")
    wait_testid(driver, "collection-row-notes")
    wait_until("the new collection's facts", lambda: "128 tokens, overlap 16" in text_of(driver, "collection-fact-chunking"))
    out["dimension"] = text_of(driver, "collection-fact-dimension")

    # Files read in the browser and upserted.
    files = sorted(os.path.join(uploads, f) for f in os.listdir(uploads))
    wait_testid(driver, "collection-files").send_keys("\n".join(files))
    click(driver, "collection-upload")
    done = wait_testid(driver, "collection-upload-result", timeout=120)
    assert f"Wrote {len(files)} documents" in done.text, done.text
    bar = driver.find_element(By.CSS_SELECTOR, '[data-testid="collection-upload-progress"]')
    assert bar.get_attribute("data-fraction") == "1", bar.get_attribute("data-fraction")

    # Paths on the daemon's machine: an index job followed to the end.
    fill(driver, "collection-index-paths", docs)
    click(driver, "collection-index-submit")
    wait_until("the index job to finish", lambda: "succeeded" in text_of(driver, "collection-index-status") or "failed" in text_of(driver, "collection-index-status"), timeout=120)
    status = text_of(driver, "collection-index-status")
    assert "succeeded" in status, status
    assert by_fraction(driver, "collection-index-progress") == "1", status
    out["index_status"] = status
    total = len(files) + len(os.listdir(docs))
    wait_until("the document count", lambda: text_of(driver, "collection-fact-documents") == str(total))

    # Search: the otter file first, with its score, chunk text and source.
    fill(driver, "collection-search", "animals that hold hands while sleeping in the water")
    fill(driver, "collection-topk", "3")
    click(driver, "collection-search-submit")
    hits = wait_until("hits", lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="collection-hit"]'), timeout=60)
    assert len(hits) == 3, [h.text for h in hits]
    first = hits[0]
    score = float(first.find_element(By.CSS_SELECTOR, '[data-testid="collection-hit-score"]').text)
    assert 0 < score <= 1, score
    assert "otters" in first.text.lower() and "Sea otters hold hands" in first.find_element(By.CSS_SELECTOR, '[data-testid="collection-hit-text"]').text, first.text
    scores = [float(h.find_element(By.CSS_SELECTOR, '[data-testid="collection-hit-score"]').text) for h in hits]
    assert scores == sorted(scores, reverse=True), scores
    out["scores"] = scores
    shot(driver, "collections")

    # Remove a document by id (an uploaded file's id is its name).
    fill(driver, "collection-remove-ids", "bread.txt")
    click(driver, "collection-remove-submit")
    removed = wait_testid(driver, "collection-remove-result")
    assert removed.text == "Removed 1 of 1 documents.", removed.text
    wait_until("the document count", lambda: text_of(driver, "collection-fact-documents") == str(total - 1))

    # An error from the API is shown: a second collection with the same name.
    if not wait_testid(driver, "collection-new").get_attribute("open"):
        click(driver, "collection-new-toggle")
    fill(driver, "collection-name", "notes")
    fill(driver, "collection-model", model)
    click(driver, "collection-create")
    err = wait_testid(driver, "error")
    assert err.get_attribute("data-status") == "409", err.text
    out["duplicate"] = err.text

    # Delete (a scratch collection), after the confirmation step.
    fill(driver, "collection-name", "scratch")
    fill(driver, "collection-model", model)
    click(driver, "collection-create")
    wait_testid(driver, "collection-row-scratch")
    wait_until("scratch opened", lambda: driver.find_element(By.ID, "coll-detail-h").text == "Collection scratch")
    click(driver, "collection-delete")
    click(driver, "collection-delete-confirm")
    wait_gone(driver, "collection-row-scratch")
    wait_testid(driver, "collection-row-notes")
    return out


def by_fraction(driver, testid):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]').get_attribute("data-fraction")
