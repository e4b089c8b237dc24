"""Shared fixtures: the NIH data directory, a test image and the app on a free port.

The scripts at the repository root (export_model.py, split_data.py, ...) are importable through
pytest.ini's ``pythonpath``; the ``cxr`` package through the editable install (pyproject.toml)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


# Tests using these fixtures carry the marker, so that the rule lives in one place: every test reading the
# NIH data directory is a `data` test (`-m "not data"` runs without the data); the tests resting on
# fixtures that take many seconds are `slow` (`make test-fast` skips them): every kind of DenseNet121
# weight file (test_model.py), GradCAM on a whole DenseNet121 (test_gradcam.py), 200 decoded 512-px
# originals (test_baselines.py).
MARKED_BY_FIXTURE = {
    "nih_dir": pytest.mark.data,
    "weight_files": pytest.mark.slow,
    "densenet": pytest.mark.slow,
    "large_originals": pytest.mark.slow,
}


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    """The NIH data directory with its label file (skips the test where it is absent)."""
    from cxr import config

    try:
        root = config.data_dir()
    except FileNotFoundError as error:
        pytest.skip(f"NIH data directory not available ({error})")
    if not (root / config.LABEL_FILE).is_file():
        pytest.skip(f"NIH label file {root / config.LABEL_FILE} not available")
    return root


@pytest.fixture(scope="module")
def test_image(nih_dir) -> Path:
    """The first full-resolution image of the committed test split (skips if the NIH data is absent)."""
    from cxr import config, data

    frame = pd.read_csv(config.SPLIT_DIR / "test.csv")
    path = nih_dir / config.FULL_RESOLUTION_DIR / frame.loc[~data.is_low_resolution(frame), "Image"].iloc[0]
    if not path.is_file():
        pytest.skip(f"test image {path} not available")
    return path


APP_START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(folder: Path):
    """`python app.py --port N` on a free port, its uploads in ``folder/uploads``; yields (url, port, log
    path) once it serves its page, and stops it afterwards."""
    log_path = folder / "app.log"
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / "uploads"), PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--port", str(port)], cwd=REPO_ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + APP_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not serve {url} within {APP_START_TIMEOUT_S} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, port, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
