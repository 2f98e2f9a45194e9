"""Tiny random-weight checkpoints in the exact diffusers folder layout, so tests load them through the same
`from_pretrained` code that loads the real ones.

Each family adds builders to BUILDERS (keyed by the registry's `Checkpoint.tiny`). Builds are seeded and cached: a
folder is reused while its stamp names the current BUILDER_VERSION and every file the builder wrote is still there.
A builder writes a whole diffusers pipeline folder (model_index.json and its subfolders) or, for a LoRA, the
folder of its .safetensors file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from . import flux, qwen

# Bump when any builder changes what it writes: cached folders with another version are rebuilt.
BUILDER_VERSION = 3
STAMP = "tiny-builder.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO_ROOT / ".cache" / "checkpoints"

# tiny name -> builder writing a complete folder (a diffusers pipeline, or a LoRA's weights file) into the (empty)
# directory it is given. Later families (Z-Image, Wan, SDXL) add their entries here.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "flux-schnell": partial(flux.build, "schnell"),
    "flux-dev": partial(flux.build, "dev"),
    "qwen-image-2512": partial(qwen.build, "2512"),
    "qwen-image-edit-2511": partial(qwen.build, "edit-2511"),
    "qwen-image-lightning": qwen.build_lightning,
}


def _files(folder: Path) -> list[str]:
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() and f.name != STAMP)


def is_built(folder: Path) -> bool:
    """A finished build of the current builders: the stamp is written last, and lists what the builder wrote."""
    stamp = folder / STAMP
    if not stamp.exists():
        return False
    try:
        meta = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    files = meta.get("files")
    return meta.get("version") == BUILDER_VERSION and bool(files) and all((folder / f).is_file() for f in files)


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One builder per checkpoint at a time, across processes (the test session and `make serve` may race)."""
    with (root / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_tiny(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """The tiny checkpoint `name` at `root/name`, built once and reused while BUILDER_VERSION holds."""
    if name not in BUILDERS:
        raise KeyError(f"no tiny builder for {name!r}; known: {sorted(BUILDERS)}")
    root = Path(root)
    out = root / name
    if is_built(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, name):
        if is_built(out):  # another process built it while we waited
            return out
        # Build beside the target and move it in, so an interrupted build never leaves a half folder behind.
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            BUILDERS[name](tmp)
            stamp = {"version": BUILDER_VERSION, "name": name, "files": _files(tmp)}
            (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the folder is served to other processes
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
