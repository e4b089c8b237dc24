"""Offline tests of cxr.download and download_data.py: the network is replaced by local bytes."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import download_data
from cxr import config, download

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # content is never decoded here


def make_archive(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> Path:
    """Write a .tar.gz holding ``members`` (name -> bytes) plus raw ``extra`` entries."""
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra or []:
            tar.addfile(info)
    return path


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable body with headers, usable as a context manager."""

    def __init__(self, payload: bytes, length: int | None = None, fail_after: int | None = None):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload) if length is None else length)}
        self.fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def serve(monkeypatch: pytest.MonkeyPatch, payload: bytes, **kwargs) -> list[str]:
    """Make urllib.request.urlopen answer every request with ``payload``; return the URLs asked for."""
    asked: list[str] = []

    def fake_urlopen(request, timeout=None):
        asked.append(request.full_url if isinstance(request, urllib.request.Request) else request)
        return FakeResponse(payload, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return asked


def forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_urlopen(*args, **kwargs):
        raise AssertionError("urlopen must not be called")

    monkeypatch.setattr(urllib.request, "urlopen", no_urlopen)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return make_archive(
        tmp_path / "source.tar.gz",
        {"images/00000001_000.png": PNG_BYTES, "images/00000002_001.png": PNG_BYTES + b"x"},
    )


# --- the URL list -------------------------------------------------------------------------------


def test_twelve_unique_https_links_numbered_like_the_nih_archives():
    urls = download.IMAGE_ARCHIVE_URLS
    assert sorted(urls) == list(range(1, 13))
    assert len(set(urls.values())) == 12
    pattern = re.compile(r"^https://nihcc\.box\.com/shared/static/[a-z0-9]{32}\.gz$")
    assert all(pattern.match(url) for url in urls.values())
    # First and last entries of the NIH's batch_download_zips.py, in its order.
    assert urls[1].endswith("/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz")
    assert urls[12].endswith("/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz")
    assert [download.archive_name(n) for n in urls] == [f"images_{n:03d}.tar.gz" for n in range(1, 13)]


def test_release_requests_the_right_url_for_each_archive(tmp_path, archive, monkeypatch):
    asked = serve(monkeypatch, archive.read_bytes())
    download.download_release(tmp_path / "nih", archives=[12, 3, 3])
    assert asked == [download.IMAGE_ARCHIVE_URLS[3], download.IMAGE_ARCHIVE_URLS[12]]


# --- download_file --------------------------------------------------------------------------------


def test_download_writes_the_served_bytes(tmp_path, archive, monkeypatch):
    serve(monkeypatch, archive.read_bytes())
    target = download.download_file("https://example.org/a.tar.gz", tmp_path / "sub" / "a.tar.gz", chunk_size=7)
    assert target.read_bytes() == archive.read_bytes()
    assert not list(tmp_path.rglob("partial-*"))


def test_failure_mid_stream_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    serve(monkeypatch, b"x" * 1000, fail_after=300)
    target = tmp_path / "images_001.tar.gz"
    with pytest.raises(download.DownloadError, match="https://example.org/big.gz") as caught:
        download.download_file("https://example.org/big.gz", target, chunk_size=100)
    assert "300 bytes" in str(caught.value)
    assert not target.exists()
    assert not list(tmp_path.glob("partial-*"))


def test_interrupt_mid_stream_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    class Interrupting(FakeResponse):
        def read(self, size=-1):
            if self.tell() >= 200:
                raise KeyboardInterrupt
            return super().read(size)

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: Interrupting(b"y" * 1000))
    target = tmp_path / "images_002.tar.gz"
    with pytest.raises(KeyboardInterrupt):
        download.download_file("https://example.org/b.gz", target, chunk_size=100)
    assert not target.exists()


def test_short_body_is_an_error_not_a_truncated_file(tmp_path, monkeypatch):
    serve(monkeypatch, b"z" * 100, length=500)
    target = tmp_path / "c.gz"
    with pytest.raises(download.DownloadError, match="100 of 500 bytes"):
        download.download_file("https://example.org/c.gz", target)
    assert not target.exists()


def test_existing_destination_is_not_downloaded_again(tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    target = tmp_path / "images_001.tar.gz"
    target.write_bytes(b"already here")
    assert download.download_file("https://example.org/a.gz", target) == target
    assert target.read_bytes() == b"already here"


def test_url_error_names_the_url_and_what_to_do(tmp_path, monkeypatch):
    def unreachable(request, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    url = download.IMAGE_ARCHIVE_URLS[5]
    with pytest.raises(download.DownloadError) as caught:
        download.download_file(url, tmp_path / "images_005.tar.gz")
    message = str(caught.value)
    assert url in message
    assert "name resolution" in message
    assert download.BOX_FOLDER_URL in message and "images_005.tar.gz" in message
    assert not list(tmp_path.iterdir())


def test_http_error_names_the_url_and_status(tmp_path, monkeypatch):
    def not_found(request, timeout=None):
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(download.DownloadError, match=r"https://example\.org/gone\.gz.*HTTP 404"):
        download.download_file("https://example.org/gone.gz", tmp_path / "gone.gz")


# --- extract_archive ------------------------------------------------------------------------------


def test_extraction_puts_the_pngs_in_images(tmp_path, archive):
    data_dir = tmp_path / "nih"
    assert download.extract_archive(archive, data_dir) == 2
    images = data_dir / config.FULL_RESOLUTION_DIR
    assert sorted(p.name for p in images.iterdir()) == ["00000001_000.png", "00000002_001.png"]
    assert (images / "00000002_001.png").read_bytes() == PNG_BYTES + b"x"
    # A second pass writes nothing new.
    assert download.extract_archive(archive, data_dir) == 0


@pytest.mark.parametrize("name", ["../evil.png", "images/../../evil.png", "/tmp/evil.png"])
def test_path_traversal_member_is_rejected_and_named(tmp_path, name):
    bad = make_archive(tmp_path / "bad.tar.gz", {"images/00000001_000.png": PNG_BYTES, name: PNG_BYTES})
    data_dir = tmp_path / "deep" / "nih"
    with pytest.raises(download.ArchiveError) as caught:
        download.extract_archive(bad, data_dir)
    assert name in str(caught.value) and "bad.tar.gz" in str(caught.value)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "deep" / "evil.png").exists()


def test_symlink_member_is_rejected_and_named(tmp_path):
    link = tarfile.TarInfo("images/00000003_000.png")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    bad = make_archive(tmp_path / "links.tar.gz", {}, extra=[link])
    with pytest.raises(download.ArchiveError, match=r"links\.tar\.gz.*00000003_000\.png.*link"):
        download.extract_archive(bad, tmp_path / "nih")
    assert not (tmp_path / "nih" / "images" / "00000003_000.png").exists()


def test_corrupt_archive_is_named(tmp_path):
    broken = tmp_path / "images_004.tar.gz"
    broken.write_bytes(b"not a gzip file at all")
    with pytest.raises(download.ArchiveError, match="images_004.tar.gz"):
        download.extract_archive(broken, tmp_path / "nih")


# --- download_release -----------------------------------------------------------------------------


def test_release_downloads_extracts_gzips_tables_and_resumes(tmp_path, archive, monkeypatch, capsys):
    data_dir = tmp_path / "nih"
    data_dir.mkdir()
    label_csv = b"Image Index,Finding Labels,Follow-up #,Patient ID\n00000001_000.png,No Finding,0,1\n"
    (data_dir / "Data_Entry_2017_v2020.csv").write_bytes(label_csv)
    serve(monkeypatch, archive.read_bytes())

    assert download.download_release(data_dir, archives=[1]) == 2
    assert (data_dir / "images" / "00000001_000.png").exists()
    assert not (data_dir / "images_001.tar.gz").exists()  # deleted after extraction by default
    assert gzip.decompress((data_dir / config.LABEL_FILE).read_bytes()) == label_csv
    out = capsys.readouterr().out
    assert "BBox_List_2017.csv" in out and download.BOX_FOLDER_URL in out  # the manual step is explained

    forbid_network(monkeypatch)  # a finished archive is neither downloaded nor extracted again
    assert download.download_release(data_dir, archives=[1]) == 0


def test_release_keeps_archives_on_request(tmp_path, archive, monkeypatch):
    serve(monkeypatch, archive.read_bytes())
    download.download_release(tmp_path, archives=[2], keep_archives=True)
    assert (tmp_path / "images_002.tar.gz").read_bytes() == archive.read_bytes()


def test_release_rejects_unknown_archive_numbers(tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    with pytest.raises(ValueError, match="1..12"):
        download.download_release(tmp_path, archives=[0, 13])


# --- the command line -----------------------------------------------------------------------------


def test_cli_defaults_to_env_variable_then_repo_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(config.DATA_DIR_VARIABLE, raising=False)
    assert download_data.parse_args([]).data_dir == config.PROJECT_ROOT / "data" / "nih"
    monkeypatch.setenv(config.DATA_DIR_VARIABLE, str(tmp_path))
    args = download_data.parse_args(["--archives", "1", "2", "--keep-archives"])
    assert (args.data_dir, args.archives, args.keep_archives) == (tmp_path, [1, 2], True)


def test_cli_rejects_archive_13(capsys):
    with pytest.raises(SystemExit) as caught:
        download_data.parse_args(["--archives", "13"])
    assert caught.value.code == 2


def test_cli_reports_a_download_error_and_exits_1(tmp_path, monkeypatch, capsys):
    def unreachable(request, timeout=None):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    assert download_data.main(["--data-dir", str(tmp_path), "--archives", "7"]) == 1
    assert download.IMAGE_ARCHIVE_URLS[7] in capsys.readouterr().err


@pytest.mark.parametrize("exported", [False, True])
def test_cli_says_how_to_point_the_project_at_a_folder_it_would_not_read(tmp_path, monkeypatch, capsys, exported):
    monkeypatch.setattr(download_data, "download_release", lambda *args, **kwargs: None)
    monkeypatch.delenv(config.DATA_DIR_VARIABLE, raising=False)
    if exported:
        monkeypatch.setenv(config.DATA_DIR_VARIABLE, str(tmp_path))
    assert download_data.main(["--data-dir", str(tmp_path)]) == 0
    advice = f"export {config.DATA_DIR_VARIABLE}={tmp_path.resolve()}"
    assert (advice in capsys.readouterr().err) != exported


def test_repo_download_folder_is_gitignored():
    ignored = (config.PROJECT_ROOT / ".gitignore").read_text().split()
    assert "data/nih/" in ignored
