"""The report as a person sees it: index.html and each interactive figure opened in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` (installed by ``.ci/run``) through Selenium. Outside CI the
test is skipped, with the reason, where either is missing; with ``CI`` set it fails instead.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tuner.report import Report, write_report
from tuner.report.runs import load_stages
from tuner.report.words import rate_words

from _tiny_study import audited_study

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not any(shutil.which(name) for name in CHROMIUM):
        return "no chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if not shutil.which(DRIVER):
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why + " (CI is set: the report must be checked in a browser)", pytrace=False)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(name) for name in CHROMIUM if shutil.which(name))  # type: ignore[assignment]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--allow-file-access-from-files", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, str]:
    storage, _ = audited_study(tmp_path_factory.getbasetemp())
    return write_report("audited", storage=storage, out=tmp_path_factory.mktemp("browser") / "report"), storage


def _open(driver, path: Path) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Load ``path`` and wait until it has loaded; the browser's log entries it made."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(path.resolve().as_uri())
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (document.readyState === 'complete') done(); else window.addEventListener('load', () => done());")
    return driver.get_log("browser")


def _errors(log: list[dict[str, object]]) -> list[object]:
    return [entry["message"] for entry in log if entry.get("level") == "SEVERE"]


def test_the_index_loads_every_image_logs_no_error_and_says_each_stages_rate(browser, report) -> None:  # type: ignore[no-untyped-def]
    written, storage = report
    log = _open(browser, written.index)
    assert _errors(log) == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")
    assert len(images) >= 4  # lr_sensitivity, lr_time, lr_curves, shape (and importance where drawn)
    assert [src for src, loaded in images if not loaded] == []
    text = browser.find_element("tag name", "body").text
    # The rate each stage trained at, as the page shows it to a reader.
    lr = optuna.load_study(study_name="audited/lr", storage=storage)
    assert f"{lr.user_attrs['best_lr']:.3g}" in text  # the rate handed on
    shape = load_stages("audited", storage)["shape"]
    assert shape.best is not None and html.unescape(rate_words(shape.best)) in text


def test_each_interactive_figure_draws_its_plot_without_a_script_error(browser, report) -> None:  # type: ignore[no-untyped-def]
    written, _ = report
    pages = [path for path in written.figures.values() if path.suffix == ".html"]
    assert pages, "the report wrote no interactive figure"
    for page in pages:
        log = _open(browser, page)
        assert _errors(log) == [], page.name
        drawn = browser.execute_script(
            "const plot = document.querySelector('.js-plotly-plot');"
            "return plot !== null && plot.querySelectorAll('svg').length > 0;")
        assert drawn, f"{page.name}: no plot was drawn"
