"""Tiny random-weight checkpoints in the exact diffusers folder layout, so tests load them through the same
`from_pretrained` code that loads the real ones.

Each family folder's tiny.py declares its builders (BUILDERS, keyed by the registry's `Checkpoint.tiny` and
`Lora.tiny`). Builds are seeded and cached: a folder is reused while its stamp names the current BUILDER_VERSION and
every file the builder wrote is still there. A builder writes a whole diffusers pipeline folder (model_index.json
and its subfolders) or, for a LoRA, the folder of its .safetensors file.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from artifacts import staged_folder
from families import hooks
from registry import CHECKPOINTS, LORAS

# Bump when any builder changes what it writes: cached folders with another version are rebuilt.
BUILDER_VERSION = 4
STAMP = "tiny-builder.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO_ROOT / ".cache" / "checkpoints"


def builder_of(name: str) -> Callable[[Path], None]:
    """The builder that writes tiny folder `name` into the (empty) directory it is given: the one its family
    folder declares for a checkpoint or LoRA of that tiny name."""
    owners = {c.family for c in CHECKPOINTS.values() if c.tiny == name} | {
        lora.family for lora in LORAS.values() if lora.tiny == name
    }
    for family in sorted(owners):
        builder = hooks(family, "tiny", "BUILDERS").get(name)
        if builder is not None:
            return builder
    raise KeyError(f"no tiny builder for {name!r} in the family folders of {sorted(owners) or 'no registry entry'}")


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
    build = builder_of(name)
    root = Path(root)
    out = root / name
    if is_built(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, name):
        if is_built(out):  # another process built it while we waited
            return out
        # Built beside the target and moved in, so an interrupted build never leaves a half folder behind.
        with staged_folder(out) as tmp:
            build(tmp)
            stamp = {"version": BUILDER_VERSION, "name": name, "files": _files(tmp)}
            (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return out
