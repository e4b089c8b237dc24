"""Atomic file writes: a file is either its old self or completely new, never half-written.

Everything this project writes that a later step reads (training state, weights, splits, the image
cache, downloads) goes through ``atomic_write``: the content is written to a temporary file beside
the target, which is then renamed over it. A rename within a folder is atomic, so a kill, a full disk
or an exception at any moment leaves the previous file whole.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

# Temporary files are named by this prefix rather than a suffix: libraries check suffixes (Keras wants
# ``.weights.h5``, NumPy adds ``.npy``), and a leftover is easy to find (``partial-*``).
PARTIAL_PREFIX = "partial-"


def partial_path(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before its rename: beside it, ``partial-``, a part of its own, then its name.

    The part of its own keeps two writers of the same file (two training workers filling the image
    cache at once) from writing into, or renaming away, each other's temporary file.
    """
    path = Path(path)
    return path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``path`` all at once: ``content`` goes to ``partial_path(path)``, renamed over ``path`` when complete.

    Args:
        path: the file to write; its folder must exist.
        content: text, bytes, or a function that writes the file at the path it is given
            (``lambda partial: network.save_weights(partial)``, ``frame.to_csv``, ``np.save``...).

    Returns:
        ``path``.

    Raises:
        Whatever writing raises (``OSError`` for a full disk, ``KeyboardInterrupt``...); the
        temporary file is removed first and ``path`` keeps its previous content.
    """
    path = Path(path)
    atomic_write_all({path: content})
    return path


def atomic_write_all(contents: dict[Path, str | bytes | Callable[[Path], object]]) -> None:
    """Write several files, all or none: every file is written before the first rename.

    A failure while writing leaves every target as it was (only a kill during the renames, a matter
    of microseconds, could leave some files renamed and others not).
    """
    partials = {Path(path): partial_path(path) for path in contents}
    try:
        for partial, content in zip(partials.values(), contents.values()):
            _write(partial, content)
        for path, partial in partials.items():
            os.replace(partial, path)
    except BaseException:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        raise


def _write(path: Path, content: str | bytes | Callable[[Path], object]) -> None:
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
