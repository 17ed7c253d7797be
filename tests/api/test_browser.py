"""The dashboard in a real browser (headless Chromium driven by selenium) against a real service with a key:
give the key, submit the demo preset from the form, watch the filters appear while the job runs and the progress
reach 100 %, and keep a screenshot.

Marked ``browser`` (excluded from the default run): ``make test-browser`` installs Debian's ``chromium`` and
``chromium-driver`` and the ``browser`` extra, then runs it. The screenshot is written into the test's ``tmp_path``
(its path is printed and recorded as the ``screenshot`` property of the test) and copied to ``docs/dashboard.png``,
the picture in the README.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from configs import sample_paths
from tests.api.conftest import ROOT, LiveService, start_service, stop_service
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
KEY = "browser-test-key"
SIDE = 48  # crops of the sample images: the demo preset learns on them in well under a minute


@pytest.fixture(scope="module")
def service(tmp_path_factory, ray_cluster) -> Iterator[LiveService]:  # noqa: F811
    live = start_service(tmp_path_factory.mktemp("deconv-data"), api_key=KEY)
    yield live
    stop_service(live)


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (make test-browser installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1300",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _sample_files(folder: Path, n: int = 6) -> list[Path]:
    paths = []
    for source in sample_paths()[:n]:
        target = folder / source.name
        Image.open(source).crop((30, 30, 30 + SIDE, 30 + SIDE)).save(target)
        paths.append(target)
    return paths


def _natural_width(driver, element_id: str) -> int:
    return driver.execute_script(
        "const img = document.getElementById(arguments[0]); return img && img.complete ? img.naturalWidth : 0;",
        element_id,
    )


def test_submit_the_demo_from_the_page_and_watch_it_learn(service, browser, tmp_path, record_property):
    wait = WebDriverWait(browser, 60)
    browser.get(service.url + "/")
    # the service has a key: the page asks for it once, and keeps it for the tab
    dialog = wait.until(
        lambda d: (
            d.find_element(By.ID, "key-dialog")
            if d.find_element(By.ID, "key-dialog").get_attribute("open") is not None
            else None
        )
    )
    dialog.find_element(By.ID, "key-input").send_keys(KEY)
    dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: Select(d.find_element(By.ID, "preset")).first_selected_option.text == "demo")
    assert browser.execute_script("return sessionStorage.getItem('deconv-api-key')") == KEY

    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in _sample_files(tmp_path)))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: "submitted" in d.find_element(By.ID, "submit-message").text)
    job_id = browser.find_element(By.ID, "job-id").text
    assert len(job_id) == 32

    seen_live = False  # a filter montage shown while the job was still running
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = browser.find_element(By.ID, "job-status").text
        if status == "running" and _natural_width(browser, "montage-L1") > 0 and not seen_live:
            seen_live = True
            browser.save_screenshot(str(tmp_path / "dashboard-running.png"))
            record_property("screenshot_running", str(tmp_path / "dashboard-running.png"))
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert status == "succeeded", browser.find_element(By.ID, "job-error").text
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs li[data-job-id="{job_id}"] .progress-label')
    WebDriverWait(browser, 10).until(lambda d: row.text == "100 %")
    assert browser.find_element(By.ID, "job-progress").text.startswith("100 %")
    assert seen_live

    for picture in ("montage-L1", "montage-L2", "reconstruction"):
        WebDriverWait(browser, 30).until(lambda d, p=picture: _natural_width(d, p) > 0)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curves svg")) == 2
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#montages figcaption")]
    assert captions == ["layer 1 · iteration 40 of 40 · learned", "layer 2 · iteration 8 of 8 · learned"]

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert Image.open(io.BytesIO(screenshot.read_bytes())).size[0] > 0
    record_property("screenshot", str(screenshot))
    print(f"dashboard screenshot: {screenshot}")  # noqa: T201  (the test's output names the file)
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, docs / "dashboard.png")
