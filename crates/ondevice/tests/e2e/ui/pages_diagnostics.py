"""Diagnostics page: the doctor's checks in a table, telemetry off with its preview, then make a bundle (a job followed to the end), download it as a file (the
browser's download directory is DOWNLOAD_DIR), and read its manifest and egress ledger in the
page.
"""

import glob
import os
import time

from harness import By, click, goto, shot, wait_testid, wait_until


def check_diagnostics(driver):
    downloads = os.environ["DOWNLOAD_DIR"]
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    out = {}
    goto(driver, "diagnostics")
    # The doctor's checks, run by the daemon: one row per check, the disk among them.
    doctor = wait_testid(driver, "doctor-table", timeout=120)
    rows = doctor.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) >= 8, doctor.text
    assert "disk space" in doctor.text and "listen address" in doctor.text, doctor.text
    # Telemetry: off by default, and the preview shows the report's version.
    tele = wait_testid(driver, "telemetry-status")
    assert tele.text.startswith("Telemetry: off"), tele.text
    preview = wait_testid(driver, "telemetry-preview")
    assert '"report_version"' in preview.text, preview.text
    click(driver, "diag-bundle-create")
    link = wait_testid(driver, "diag-download", timeout=120)
    name = link.get_attribute("download")
    assert name.startswith("ondevice-diagnostics-") and name.endswith(".tar.gz"), name
    progress = driver.find_element(By.CSS_SELECTOR, '[data-testid="diag-bundle-progress"]')
    assert progress.get_attribute("data-fraction") == "1", progress.get_attribute("data-fraction")
    link.click()
    path = os.path.join(downloads, name)
    wait_until("the download", lambda: os.path.isfile(path) and not glob.glob(os.path.join(downloads, "*.crdownload")), timeout=60)
    out["bundle"] = path
    # The page opened the bundle: its manifest lists manifest's files, the ledger is shown.
    manifest = wait_testid(driver, "diag-manifest")
    assert "build.json" in manifest.text and "config.toml" in manifest.text, manifest.text
    wait_testid(driver, "diag-egress-ledger")
    click(driver, "diag-view-build.json")
    view = wait_testid(driver, "diag-file-view")
    wait_until("build.json shown", lambda: '"version"' in view.text)
    wait_testid(driver, "diag-offline")
    time.sleep(0.2)
    shot(driver, "diagnostics")
    return out
