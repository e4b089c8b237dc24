"""The web app's server: `app.py` started as a subprocess and sent real HTTP requests (no browser).

Checked: only the app's own Host and Origin are answered, uploads are bounded and do not stay on
disk, responses name no server path, and a taken --port is reported before the model loads.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import running_app

import app
from cxr.app_logic import MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent
FOREIGN_ORIGINS = ["http://evil.example", "null", "https://127.0.0.1"]

pytestmark = pytest.mark.slow


@dataclass
class Server:
    url: str
    port: int
    uploads: Path  # the server's GRADIO_TEMP_DIR

    def stored_files(self) -> list[Path]:
        return [path for path in self.uploads.rglob("*") if path.is_file()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py --port N` on a free port, its uploads in a folder of its own."""
    folder = tmp_path_factory.mktemp("app")
    with running_app(folder) as (url, port, _):
        yield Server(url, port, folder / "uploads")


def upload(client: httpx.Client, name: str, data: bytes, **headers) -> httpx.Response:
    return client.post("/gradio_api/upload", files={"files": (name, data, "image/png")}, headers=headers)


def diagnose(client: httpx.Client, path: str, **headers) -> str:
    """Call the app's `diagnose` API on an uploaded file; the raw text of its event stream."""
    started = client.post("/gradio_api/call/diagnose", headers=headers,
                          json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]})
    assert started.status_code == 200, started.text
    result = client.get(f"/gradio_api/call/diagnose/{started.json()['event_id']}", headers=headers)
    assert result.status_code == 200
    return result.text


def test_a_foreign_origin_is_refused(server, test_image):
    """A page of another site open in the same browser can neither read the app nor store files."""
    before = server.stored_files()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for origin in FOREIGN_ORIGINS + [f"http://127.0.0.1:{server.port + 1}"]:
            assert client.get("/config", headers={"Origin": origin}).status_code == 403, origin
            assert upload(client, "x.png", test_image.read_bytes(), Origin=origin).status_code == 403, origin
    assert server.stored_files() == before


def test_a_foreign_host_is_refused(server, test_image):
    """DNS rebinding: another site's name resolving to 127.0.0.1 arrives with that name as Host."""
    before = server.stored_files()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for host in ("evil.example", f"evil.example:{server.port}", f"127.0.0.1:{server.port + 1}"):
            assert client.get("/", headers={"Host": host}).status_code == 403, host
            origin = f"http://{host}"
            assert upload(client, "x.png", test_image.read_bytes(), Host=host, Origin=origin).status_code == 403
    assert server.stored_files() == before


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_the_apps_own_origin_works(server, test_image, name):
    own = {"Host": f"{name}:{server.port}", "Origin": f"http://{name}:{server.port}"}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.get("/", headers={"Host": own["Host"]}).status_code == 200
        assert client.get("/config", headers=own).status_code == 200
        uploaded = upload(client, test_image.name, test_image.read_bytes(), **own)
        assert uploaded.status_code == 200, uploaded.text
        assert "Top finding" in diagnose(client, uploaded.json()[0], **own)


def test_files_do_not_accumulate_after_requests(server, test_image):
    """The overlay is sent inline, never stored; the upload is deleted CACHE_AGE_S after it came."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        uploaded = upload(client, test_image.name, test_image.read_bytes())
        assert uploaded.status_code == 200, uploaded.text
        result = diagnose(client, uploaded.json()[0])
    assert "Top finding" in result and "data:image/png;base64," in result
    assert str(server.uploads) not in result, "the response names a path on the server"
    deadline = time.monotonic() + app.CACHE_AGE_S + 4 * app.CACHE_CHECK_S
    while server.stored_files() and time.monotonic() < deadline:
        time.sleep(1)
    assert server.stored_files() == []


def test_only_uploaded_files_are_analysed(server, test_image):
    """The API names the file by its path on the server: one outside the upload folder is refused."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        result = diagnose(client, str(test_image))
    assert "event: error" in result and "Top finding" not in result


def test_a_too_large_upload_is_refused(server):
    """One file over the limit, several files over it together, or a body of unannounced length."""
    before = server.stored_files()
    third = MAX_FILE_BYTES // 3
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for size in (MAX_FILE_BYTES + 1, 2 * MAX_FILE_BYTES):
            refused = upload(client, "large.png", b"\0" * size)
            assert refused.status_code == 413, (size, refused.text)
        files = [("files", (f"part{index}.png", bytes([index]) * third, "image/png")) for index in range(4)]
        refused = client.post("/gradio_api/upload", files=files)
        assert refused.status_code == 413, refused.text
        form = client.build_request("POST", "/gradio_api/upload", files={"files": ("small.png", b"\0", "image/png")})
        chunked = iter([form.read()])  # the same body, sent in chunks without Content-Length
        refused = client.post("/gradio_api/upload", content=chunked,
                              headers={"Content-Type": form.headers["Content-Type"]})
        assert refused.status_code == 411, refused.text
    assert server.stored_files() == before


def test_what_one_client_stores_is_capped(server):
    """Uploads of 40 MB each, all different: the third within CACHE_AGE_S is refused."""
    size = 40 * 2**20
    with httpx.Client(base_url=server.url, timeout=120) as client:
        responses = [upload(client, f"scan{index}.png", bytes([index]) * size) for index in range(3)]
    try:
        assert [response.status_code for response in responses] == [200, 200, 413]
        assert "Too many recent uploads" in responses[2].text
        assert sum(path.stat().st_size for path in server.stored_files()) <= app.MAX_STORED_BYTES
    finally:
        for response in responses[:2]:
            if response.status_code == 200:
                Path(response.json()[0]).unlink(missing_ok=True)


def test_a_port_in_use_is_reported_before_loading_the_model():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"--port {port}" in run.stderr and "in use" in run.stderr
    assert "Loading" not in run.stdout, "the model was loaded before the port was checked"
