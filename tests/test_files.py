"""cxr.files.atomic_write: a file is either its old self or completely new."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cxr import files


@pytest.mark.parametrize("content", ["text", b"\x00bytes", lambda path: np.save(path, np.arange(3))])
def test_atomic_write_writes_text_bytes_or_what_a_writer_writes_and_leaves_no_partial_file(tmp_path, content):
    path = tmp_path / "target.npy"
    assert files.atomic_write(path, content) == path
    expected = content if isinstance(content, (str, bytes)) else None
    if isinstance(expected, str):
        assert path.read_text() == expected
    elif isinstance(expected, bytes):
        assert path.read_bytes() == expected
    else:
        np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["target.npy"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_previous_file_and_removes_the_partial_one(tmp_path, failure):
    path = tmp_path / "state.json"
    files.atomic_write(path, '{"epoch": 1}')

    def half_written(partial):
        partial.write_text('{"epo')
        raise failure

    with pytest.raises(type(failure)):
        files.atomic_write(path, half_written)
    assert path.read_text() == '{"epoch": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    files.atomic_write(path, '{"epoch": 1}')

    def crash(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError):
        files.atomic_write(path, '{"epoch": 2}')
    assert path.read_text() == '{"epoch": 1}'
    assert not list(tmp_path.glob(files.PARTIAL_PREFIX + "*"))


def test_writing_several_files_is_all_or_nothing(tmp_path):
    first, second = tmp_path / "train.csv", tmp_path / "valid.csv"
    files.atomic_write_all({first: "old train", second: "old valid"})

    def disk_full(partial):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write_all({first: "new train", second: disk_full})
    assert (first.read_text(), second.read_text()) == ("old train", "old valid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv", "valid.csv"]


def test_two_writers_of_the_same_file_at_once_both_succeed(tmp_path):
    # Two training workers can fill the same image cache at the same moment: each must write its own
    # temporary file, and the file must end as one writer's whole content.
    target, both_writing = tmp_path / "cache.npy", threading.Barrier(2)
    errors = []

    def writer(text):
        def write(partial):
            partial.write_text(text[:5])
            both_writing.wait(timeout=10)  # both temporary files exist before either is renamed
            partial.write_text(text)

        try:
            files.atomic_write(target, write)
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(text,)) for text in ("first writer", "second writer")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert target.read_text() in ("first writer", "second writer")
    assert not list(tmp_path.glob("partial-*"))
