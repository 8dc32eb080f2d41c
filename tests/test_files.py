"""Atomic writes and checksum-verified files (dinotwins/files.py), the one implementation every writer uses."""

import json

import numpy as np
import pytest

from dinotwins.files import atomic_write, checksum_problem, read_verified, sidecar, write_with_checksum


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_writer_that_appends_the_suffix_writes_the_file_itself(tmp_path):
    path = tmp_path / "emb.npy"
    write_with_checksum(path, lambda tmp: np.save(tmp, np.arange(3)))  # np.save adds .npy unless it is there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.npy.sha256"]
    assert np.array_equal(np.load(path), np.arange(3)) and checksum_problem(path) is None


def test_read_verified_returns_the_bytes_only_when_they_match_their_record(tmp_path):
    path = tmp_path / "x.json"
    write_with_checksum(path, b'{"a": 1}')
    assert json.loads(sidecar(path).read_text())["size"] == 8
    assert read_verified(path) == b'{"a": 1}'
    path.write_bytes(b'{"a": 2}')
    assert read_verified(path) is None and checksum_problem(path) == "sha256 mismatch (corrupted)"
    path.write_bytes(b'{"a"')
    assert checksum_problem(path) == "size 4 bytes, expected 8 (truncated?)"
    sidecar(path).unlink()
    assert read_verified(path) is None and "missing or unreadable" in checksum_problem(path)
    assert read_verified(tmp_path / "absent") is None
