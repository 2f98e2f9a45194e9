"""Files every build stage writes the same way: content hashes, atomic writes, folders built aside and swapped in,
and artifacts placed by hard link.

Checkpoints, exports, FP8 graphs, TensorRT plans and the model repository all use these, so a reader (Triton, a
rerun, another process) never sees half an artifact and a multi-GB file is never copied when a link will do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_hash(folder: Path) -> str:
    """sha256 over a folder's relative file names and contents.

    A Hugging Face snapshot's files are links to blobs named by their own hash: that name stands for the content
    instead of re-reading gigabytes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        real = Path(os.path.realpath(path))
        if path.is_symlink() and real.parent.name == "blobs":
            digest.update(b"blob:" + real.name.encode())
        else:
            digest.update(file_sha256(path).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes | memoryview | str) -> int:
    """Write `path` through a temporary file beside it and a rename; returns its size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    tmp.replace(path)
    return path.stat().st_size


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yields an empty folder beside `final` to build into; when the block succeeds it replaces `final` (readable by
    other processes), when it fails it is removed and `final` stays as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the folder is read by other processes
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def place_file(src: Path, dst: Path) -> bool:
    """Hard-link an artifact to `dst` (no copy of multi-GB files), copying across file systems; True when `dst` now
    holds other bytes than before."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.stat().st_ino == src.stat().st_ino:
            return False
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return True
