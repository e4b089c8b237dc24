"""The web app end to end: `app.py` started as a subprocess, driven in a real headless Chromium.

Chromium is Debian's (`/usr/bin/chromium`, installed by `make test`), driven with Playwright for
Python; Playwright's own browser downloads are not used. The test of a real upload saves the page
as a screenshot in its temporary directory; with CXR_UPDATE_SCREENSHOT=1 it replaces
images/app_screenshot.png, the screenshot of the README, instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import running_app

from cxr import config

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
README_SCREENSHOT = ROOT / "images" / "app_screenshot.png"
# Headless on a machine without a GPU, sandbox or outside network (see the Makefile's test set-up).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RESULT_TIMEOUT_MS = 120_000

# In CI the browser test must run: a missing Chromium fails there instead of skipping.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file() and not os.environ.get("CI"),
        reason=f"Debian's chromium is not installed at {CHROMIUM}: `make test` installs it "
               "(apt-get install chromium), or install it by hand to run the browser tests.",
    ),
]



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py --port N` on a free port; yields its URL once it serves the page."""
    with running_app(tmp_path_factory.mktemp("app")) as (url, _, log_path):
        yield url + "/"
    log = log_path.read_text()
    assert "Traceback" not in log, f"the server logged an exception:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(server, browser):
    """A function opening the app in a new page; checks that no page asked for an outside address."""
    pages, outside = [], []

    def open_one():
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("request", lambda request: outside.append(request.url)
                if not request.url.startswith((server, "data:", "blob:")) else None)
        page.goto(server)
        page.wait_for_selector("#upload input[type=file]", state="attached")
        pages.append(page)
        return page

    yield open_one
    for page in pages:
        page.close()
    assert not outside, f"the page requested outside addresses (the app must work offline): {outside}"


def upload(page, path: Path) -> None:
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():  # a file is already there: remove it to get the file input back
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def wait_for_message(page, text: str) -> str:
    page.wait_for_function("text => (document.querySelector('#message')?.innerText || '').includes(text)",
                           arg=text, timeout=RESULT_TIMEOUT_MS)
    return page.inner_text("#message")


def read_table(page) -> list[dict]:
    """The findings table's body as shown: one dict per row, with the cell's background colour."""
    cells = page.eval_on_selector_all(
        "#findings [role=gridcell][data-row]",
        """cells => cells.map(cell => ({row: +cell.dataset.row, col: +cell.dataset.col,
                                         text: cell.innerText.trim(),
                                         background: getComputedStyle(cell).backgroundColor}))""",
    )
    headers = ["Finding", "Probability", "Threshold", "Above threshold"]
    rows: dict[int, dict] = {}
    for cell in cells:
        rows.setdefault(cell["row"], {})[headers[cell["col"]]] = cell["text"]
        rows[cell["row"]]["background"] = cell["background"]
    return [rows[index] for index in sorted(rows)]


def test_page_shows_the_disclaimer(open_page):
    page = open_page()
    disclaimer = page.inner_text("#disclaimer")
    assert "not a diagnostic device" in disclaimer
    assert "Teaching project" in disclaimer


def test_upload_a_real_image_shows_the_findings_and_gradcam(open_page, test_image, tmp_path):
    page = open_page()
    upload(page, test_image)
    message = wait_for_message(page, "Top finding")
    rows = read_table(page)
    assert len(rows) == 14
    probabilities = [float(row["Probability"]) for row in rows]
    assert all(0.0 <= value <= 1.0 for value in probabilities)
    assert probabilities == sorted(probabilities, reverse=True)
    assert f"Top finding: {rows[0]['Finding']}" in message
    assert test_image.name in message
    assert sorted(row["Finding"] for row in rows) == sorted(config.LABELS)
    # Findings at or above their threshold are highlighted, the others not.
    for row in rows:
        assert row["Above threshold"] in ("yes", "no", "n/a")
        highlighted = row["background"] not in ("rgba(0, 0, 0, 0)", "transparent")
        if row["Above threshold"] == "yes":
            assert highlighted, row
    # The GradCAM figure has arrived and decoded.
    page.wait_for_function("() => { const img = document.querySelector('#gradcam img');"
                           " return img && img.complete && img.naturalWidth > 0; }", timeout=RESULT_TIMEOUT_MS)
    assert page.eval_on_selector("#gradcam img", "img => img.naturalWidth / img.naturalHeight") > 3
    page.wait_for_timeout(500)  # let the image's fade-in finish before the screenshot
    # A committed file is rewritten only when asked, so that a test run leaves the checkout as it was.
    screenshot = README_SCREENSHOT if os.environ.get("CXR_UPDATE_SCREENSHOT") == "1" else tmp_path / "app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_a_non_image_shows_a_message_and_the_app_keeps_serving(open_page, test_image, tmp_path):
    page = open_page()
    not_an_image = tmp_path / "report.txt"
    not_an_image.write_text("This is a radiology report, not an image.\n")
    upload(page, not_an_image)
    message = wait_for_message(page, "Error")
    assert "'report.txt' is not an image" in message
    assert "Traceback" not in page.inner_text("body")
    assert read_table(page) == []
    # The same page, then a good file: it is answered.
    upload(page, test_image)
    wait_for_message(page, "Top finding")
    assert len(read_table(page)) == 14


def test_markdown_in_a_file_name_is_shown_literally(open_page, test_image, tmp_path):
    """Gradio removes some characters from an upload's name (here * and :); the rest, a Markdown
    link, is shown as it is, not as a link."""
    path = tmp_path / "**x**[y](javascript:z).png"
    path.write_bytes(test_image.read_bytes())
    page = open_page()
    upload(page, path)
    message = wait_for_message(page, "Top finding")
    assert "for 'x[y](javascriptz).png'." in message
    assert page.locator("#message a").count() == 0


def test_several_uploads_at_once_are_all_answered(open_page, test_image, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(test_image.read_bytes()[:5000])
    pages = [open_page() for _ in range(3)]
    for page, path in zip(pages, (test_image, truncated, test_image)):
        upload(page, path)
    first = wait_for_message(pages[0], "Top finding")
    assert "truncated or corrupt" in wait_for_message(pages[1], "Error")
    third = wait_for_message(pages[2], "Top finding")
    assert first.splitlines()[0] == third.splitlines()[0]
    assert read_table(pages[0]) == read_table(pages[2])
