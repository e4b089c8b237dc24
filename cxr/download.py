"""Fetching the full NIH ChestX-ray14 release (needs internet).

The NIH Clinical Center publishes the release in the box.com folder
https://nihcc.app.box.com/v/ChestXray-NIHCC: 112,120 PNG images in 12 ``images_NNN.tar.gz``
archives (about 45 GB in all), plus the label file ``Data_Entry_2017_v2020.csv`` and the boxes
``BBox_List_2017.csv``. The NIH's own ``batch_download_zips.py`` (shipped in that folder) lists a
direct ``https://nihcc.box.com/shared/static/...`` link for each archive; those links are
:data:`IMAGE_ARCHIVE_URLS` below. The NIH publishes no such direct link for the two CSV files, so
they are downloaded by hand from the folder and dropped into the data directory;
:func:`download_release` then gzips them under the names the project reads
(:data:`cxr.config.LABEL_FILE`, :data:`cxr.config.BBOX_FILE`).

Resulting layout (what :func:`cxr.config.data_dir` expects)::

    DATA_DIR/
        Data_Entry_2017_v2020.csv.gz
        BBox_List_2017.csv.gz
        images/00000001_000.png ...

Everything here is safe to interrupt and re-run: downloads go to ``partial-*`` files that are
renamed only when complete, every extracted image is written the same way, and an archive already
extracted is remembered by a marker file, so it is neither downloaded nor unpacked again.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from cxr import config
from cxr.files import atomic_write

BOX_FOLDER_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

# Archive number -> direct link, as listed (in this order, images_001 first) by the NIH's
# batch_download_zips.py in the box folder above.
IMAGE_ARCHIVE_URLS: dict[int, str] = {
    1: "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz",
    2: "https://nihcc.box.com/shared/static/i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz",
    3: "https://nihcc.box.com/shared/static/f1t00wrtdk94satdfb9olcolqx20z2jp.gz",
    4: "https://nihcc.box.com/shared/static/0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz",
    5: "https://nihcc.box.com/shared/static/v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz",
    6: "https://nihcc.box.com/shared/static/asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz",
    7: "https://nihcc.box.com/shared/static/jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz",
    8: "https://nihcc.box.com/shared/static/tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz",
    9: "https://nihcc.box.com/shared/static/upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz",
    10: "https://nihcc.box.com/shared/static/l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz",
    11: "https://nihcc.box.com/shared/static/hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz",
    12: "https://nihcc.box.com/shared/static/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz",
}

# The CSV files as named in the box folder -> the gzipped names the project reads.
TABLE_FILES: dict[str, str] = {
    "Data_Entry_2017_v2020.csv": config.LABEL_FILE,
    "BBox_List_2017.csv": config.BBOX_FILE,
}

# Rough size of one archive (the 12 hold about 45 GB); only used to warn about disk space.
APPROX_ARCHIVE_BYTES = 4 * 1024**3

DEFAULT_CHUNK_SIZE = 1024 * 1024
USER_AGENT = "cxr-download/1.0 (NIH ChestX-ray14 course project; Python urllib)"


class DownloadError(RuntimeError):
    """A download that failed or came back incomplete; the message names the URL and what to do."""


class ArchiveError(ValueError):
    """An archive that is unreadable or holds an unsafe member; the message names both."""


def archive_name(number: int) -> str:
    """Return the NIH file name of archive ``number`` (1..12), e.g. ``images_001.tar.gz``."""
    return f"images_{number:03d}.tar.gz"


def _manual_hint(destination: Path) -> str:
    return (
        f"Check your internet connection and retry (finished files are kept), or download "
        f"{destination.name} by hand from the NIH folder {BOX_FOLDER_URL} and save it as {destination}."
    )


def download_file(url: str, destination: str | os.PathLike, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Path:
    """Download ``url`` to ``destination``, atomically, unless the destination already exists.

    The bytes are streamed into a ``partial-`` file beside it (``cxr.files.atomic_write``), renamed to
    the final name only once the whole body has arrived and its length matches the server's
    ``Content-Length``. A failed download removes its partial file; a killed one leaves at most the
    ``partial-`` file, never a truncated file under the final name.

    Args:
        url: The address to fetch (redirects are followed).
        destination: Where the file goes; its folder is created if needed.
        chunk_size: Bytes read per step.

    Returns:
        The destination path.

    Raises:
        DownloadError: on an HTTP error, an unreachable server, a broken connection or a body
            shorter or longer than announced; the message names the URL and what to do.
    """
    destination = Path(destination)
    if destination.exists():
        print(f"{destination.name}: already present, not downloaded again.", flush=True)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    received = 0

    def stream(partial: Path) -> None:
        nonlocal received
        with urllib.request.urlopen(request, timeout=60) as response, open(partial, "wb") as sink:
            announced = response.headers.get("Content-Length")
            total = int(announced) if announced and announced.isdigit() else None
            print(
                f"{destination.name}: downloading {url}"
                + (f" ({total / 1024**3:.2f} GB)" if total else ""),
                flush=True,
            )
            next_report = 0.1
            while chunk := response.read(chunk_size):
                sink.write(chunk)
                received += len(chunk)
                if total and received / total >= next_report:
                    print(f"{destination.name}: {received / total:4.0%}", flush=True)
                    next_report += 0.1
            if total is not None and received != total:
                raise DownloadError(
                    f"Download of {url} incomplete: got {received} of {total} bytes. "
                    + _manual_hint(destination)
                )

    # Any failure, Ctrl+C included, leaves nothing half-written behind (atomic_write removes the partial file).
    try:
        atomic_write(destination, stream)
    except urllib.error.HTTPError as error:
        raise DownloadError(
            f"Download of {url} failed: HTTP {error.code} {error.reason}. If the NIH moved the file, "
            + _manual_hint(destination)
        ) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(
            f"Download of {url} failed after {received} bytes: {reason}. " + _manual_hint(destination)
        ) from error
    return destination


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Raise ArchiveError for a member that could write outside the target or is not a plain file."""
    name = member.name
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract it.")
    if ".." in posix.parts or ".." in windows.parts:
        raise ArchiveError(
            f"{archive}: member {name!r} points outside the target folder (..); refusing to extract it."
        )
    if member.isdir():
        return
    if not member.isreg():
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise ArchiveError(f"{archive}: member {name!r} is a {kind}, not a regular file; refusing to extract it.")


def extract_archive(archive: str | os.PathLike, data_dir: str | os.PathLike) -> int:
    """Extract the PNG images of one ``images_NNN.tar.gz`` into ``data_dir/images/``.

    The NIH archives hold ``images/NNNNNNNN_NNN.png``; each image lands as
    ``data_dir/images/NNNNNNNN_NNN.png`` (written to a ``partial-`` file, then renamed, so an
    interrupted extraction never leaves a truncated PNG). Images already present are skipped.
    Directory entries and non-PNG regular files are skipped. The full release's images are
    1024x1024 (this project's subset comes at 512, 320, 256 and 64 px); no conversion is needed,
    since ``cxr.images.read_image`` brings any size to the canonical size, then to the model's.

    Every member is checked before it is written: absolute paths, ``..`` components (path
    traversal) and anything but regular files and folders (symbolic or hard links, devices, FIFOs)
    are rejected.

    Args:
        archive: Path of the ``.tar.gz`` file.
        data_dir: The NIH data directory; ``images/`` is created inside it if needed.

    Returns:
        The number of images written (images already present are not counted).

    Raises:
        ArchiveError: for an unsafe member or an unreadable archive, naming the archive and member.
    """
    archive = Path(archive)
    images = Path(data_dir) / config.FULL_RESOLUTION_DIR
    images.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                _check_member(archive, member)
                if not member.isreg() or not member.name.lower().endswith(".png"):
                    continue
                target = images / PurePosixPath(member.name).name
                if target.exists():
                    skipped += 1
                    continue
                source = tar.extractfile(member)
                if source is None:  # cannot happen for a regular file; guard anyway
                    raise ArchiveError(f"{archive}: member {member.name!r} has no data.")
                with source:
                    atomic_write(target, lambda partial: _copy(source, open(partial, "wb")))
                written += 1
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as error:
        raise ArchiveError(
            f"{archive}: not a readable .tar.gz ({error}). Delete it and run the download again."
        ) from error
    already = f", {skipped} already there" if skipped else ""
    print(f"{archive.name}: {written} images extracted to {images}{already}", flush=True)
    return written


def gzip_file(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Gzip ``source`` into ``destination`` atomically (via a ``partial-`` file); the source is kept."""
    source, destination = Path(source), Path(destination)
    with open(source, "rb") as raw:
        return atomic_write(destination, lambda partial: _copy(raw, gzip.open(partial, "wb")))


def _copy(source: BinaryIO, sink: BinaryIO) -> None:
    """Copy one open file into another, closing the second."""
    with sink:
        shutil.copyfileobj(source, sink)


def _archive_numbers(archives: Iterable[int] | None) -> list[int]:
    if archives is None:
        return sorted(IMAGE_ARCHIVE_URLS)
    numbers = sorted(set(archives))
    unknown = [n for n in numbers if n not in IMAGE_ARCHIVE_URLS]
    if unknown:
        raise ValueError(f"Unknown archive number(s) {unknown}; the NIH release has archives 1..12.")
    return numbers


def _prepare_tables(data_dir: Path) -> list[str]:
    """Gzip hand-downloaded CSV files under the project's names; return the tables still missing."""
    missing = []
    for csv_name, gz_name in TABLE_FILES.items():
        csv_path, gz_path = data_dir / csv_name, data_dir / gz_name
        if gz_path.exists():
            continue
        if csv_path.exists():
            gzip_file(csv_path, gz_path)
            print(f"{csv_name}: gzipped to {gz_path.name}.", flush=True)
        else:
            missing.append(csv_name)
    return missing


def download_release(
    data_dir: str | os.PathLike, archives: Iterable[int] | None = None, keep_archives: bool = False
) -> int:
    """Download and extract the NIH image archives, and put the label and box files in place.

    Each chosen archive is downloaded into ``data_dir`` (see :func:`download_file`), extracted into
    ``data_dir/images/`` (see :func:`extract_archive`) and then deleted unless ``keep_archives``.
    A hidden marker ``.images_NNN.tar.gz.extracted`` records a finished archive, so re-running
    skips it. ``Data_Entry_2017_v2020.csv`` and ``BBox_List_2017.csv`` have no published direct
    link: if they were saved into ``data_dir`` by hand they are gzipped to the names the project
    reads, otherwise a message says where to get them.

    Args:
        data_dir: Target NIH data directory (created if needed).
        archives: Archive numbers to fetch, 1..12; all 12 (about 45 GB) when None.
        keep_archives: Keep the ``.tar.gz`` files after extraction.

    Returns:
        The number of images newly extracted.

    Raises:
        ValueError: for an archive number outside 1..12.
        DownloadError: when a download fails (finished archives stay done).
        ArchiveError: when an archive is unreadable or holds an unsafe member.
    """
    numbers = _archive_numbers(archives)
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    todo = [n for n in numbers if not (data_dir / f".{archive_name(n)}.extracted").exists()]
    needed = len(todo) * APPROX_ARCHIVE_BYTES * 2  # archive plus its extracted images
    free = shutil.disk_usage(data_dir).free
    if needed > free:
        print(
            f"Warning: about {needed / 1024**3:.0f} GB may be needed in {data_dir}, "
            f"{free / 1024**3:.0f} GB are free.",
            flush=True,
        )
    total = 0
    for position, number in enumerate(numbers, start=1):
        name = archive_name(number)
        marker = data_dir / f".{name}.extracted"
        print(f"[{position}/{len(numbers)}] {name}", flush=True)
        if marker.exists():
            print(f"{name}: already extracted, skipped.", flush=True)
            continue
        archive = download_file(IMAGE_ARCHIVE_URLS[number], data_dir / name)
        total += extract_archive(archive, data_dir)
        marker.touch()
        if not keep_archives:
            archive.unlink()
    missing = _prepare_tables(data_dir)
    if missing:
        print(
            f"Still missing: {', '.join(missing)}. The NIH publishes no direct link for them: download "
            f"them from {BOX_FOLDER_URL} into {data_dir} and run this again to gzip them "
            f"(or gzip them yourself to {', '.join(TABLE_FILES[m] for m in missing)}).",
            flush=True,
        )
    print(
        f"Done: {total} new images in {data_dir / config.FULL_RESOLUTION_DIR}. "
        f"Point the project at them with {config.DATA_DIR_VARIABLE}={data_dir}",
        flush=True,
    )
    return total
