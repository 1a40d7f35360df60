"""helm_scale.durable: complete or absent, never half-written."""
from __future__ import annotations

import hashlib

import pytest

from helm_scale.durable import commit_dir, sha256_file, staged_dir, write_atomic


def test_sha256_file_reads_in_blocks(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    write_atomic(tmp_path / "a.json", "one")
    write_atomic(tmp_path / "a.json", b"two")
    assert (tmp_path / "a.json").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_commit_dir_refuses_an_existing_directory_unless_replacing(tmp_path):
    final = tmp_path / "final"
    (final / "old").mkdir(parents=True)
    for attempt in ("refused", "replaced"):
        staging = tmp_path / f".staging-{attempt}"
        (staging / "sub").mkdir(parents=True)
        (staging / "sub" / "x").write_text(attempt)
        if attempt == "refused":
            with pytest.raises(OSError):
                commit_dir(staging, final)
            assert (final / "old").is_dir() and staging.is_dir()
        else:
            assert commit_dir(staging, final, replace=True) == final
            assert (final / "sub" / "x").read_text() == "replaced" and not staging.exists()


def test_staged_dir_commits_on_success_and_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "out") as tmp:
            (tmp / "half").write_text("written")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(tmp_path / "out") as tmp:
        (tmp / "whole").write_text("written")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "whole").is_file()
