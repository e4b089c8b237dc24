"""Shared test setup: make the repository importable however pytest is started, and shared fixtures."""

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
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


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
                pytest.fail(f"app.py did not serve {url} within {APP_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, port, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
