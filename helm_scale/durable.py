"""Files that are either complete on disk or absent: checksums, atomic writes, atomic
directory commits. Used by checkpoints, exports and prep; imports nothing of ours.

    sha256_file(path) -> hex digest, read in 4 MiB blocks
    temp_path(path) -> Path         the hidden sibling ``.NAME.tmp`` a file is written as
    is_temp(name) -> bool           whether a file name is such a sibling (left by a crash)
    commit_file(tmp, path)          fsync ``tmp``, rename it to ``path``, fsync the directory
    write_atomic(path, text_or_bytes)   write the temp_path, then commit_file
    commit_dir(staging, final)      fsync every file under ``staging``, rename it to ``final``
    with staged_dir(final) as tmp:  a sibling directory committed as ``final`` when the block
                                    ends, removed if it raises

A rename is atomic on POSIX filesystems, so readers see the old state or the new one; the
fsyncs make the new one survive a power cut (data first, then the directory entry).
The standard library has each piece but not the sequence, hence this module.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path) -> None:
    """fsync a file or a directory by name (Linux flushes the inode whichever fd asks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def commit_file(tmp, path) -> None:
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def write_atomic(path, data: str | bytes) -> None:
    tmp = temp_path(path)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    commit_file(tmp, path)


def commit_dir(staging, final, replace: bool = False) -> Path:
    """Rename a fully written directory into place; an existing ``final`` is an error
    unless ``replace`` (then it is removed first)."""
    staging, final = Path(staging), Path(final)
    for path in sorted(staging.rglob("*"), reverse=True):  # files before their directories
        fsync_path(path)
    fsync_path(staging)
    if replace and final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)  # onto an existing non-empty directory: OSError
    fsync_path(final.parent)
    return final


@contextlib.contextmanager
def staged_dir(final, replace: bool = False) -> Iterator[Path]:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        commit_dir(tmp, final, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
