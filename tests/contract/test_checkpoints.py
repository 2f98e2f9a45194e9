"""Every registry checkpoint and LoRA: a tiny folder in the real diffusers layout, built by its family's builder,
reproducible, and sharing exactly the subfolders the registry says it shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifacts import folder_hash
from checkpoints import BUILDER_VERSION, build_tiny
from checkpoints.tiny import STAMP
from registry import CHECKPOINTS, FAMILIES, LORAS, ROUTES, family_of
from tests.fixtures import TEST_CHECKPOINTS

TINY_NAMES = sorted({c.tiny for c in CHECKPOINTS.values()} | {lora.tiny for lora in LORAS.values()})
SHARED = [(c, f) for f in FAMILIES.values() for c in f.components if len(c.checkpoints) > 1]


def test_every_checkpoint_has_its_tiny_folder(tiny_checkpoint_dirs: dict[str, Path]) -> None:
    assert set(tiny_checkpoint_dirs) == set(CHECKPOINTS)
    for key, path in tiny_checkpoint_dirs.items():
        assert path.name == CHECKPOINTS[key].tiny
        assert json.loads((path / STAMP).read_text())["version"] == BUILDER_VERSION


@pytest.mark.parametrize("key", sorted(CHECKPOINTS))
def test_layout_is_the_diffusers_one(tiny_checkpoint_dirs: dict[str, Path], key: str) -> None:
    path = tiny_checkpoint_dirs[key]
    family = family_of(key)
    index = json.loads((path / "model_index.json").read_text())
    # The pipeline class of the tasks its routes serve (a VACE checkpoint is WanVACEPipeline's, not WanPipeline's).
    served = {family.pipeline_for(r.task).pipeline_class for r in ROUTES.values() if r.checkpoint == key}
    assert index["_class_name"] in (served or {family.pipeline_class})
    modules = {
        name: entry
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and entry[1] is not None  # not a config value
    }
    for name in modules:
        assert (path / name).is_dir(), name
    # Every component's subfolder is a saved module: its config and its weights.
    for component in family.components_for(key).values():
        sub = path / component.subfolder
        assert (sub / "config.json").is_file() and list(sub.glob("*.safetensors")), component.triton_model
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 3_000_000


@pytest.mark.parametrize(("component", "family"), SHARED, ids=[c.triton_model for c, _ in SHARED])
def test_shared_subfolders_are_byte_identical(tiny_checkpoint_dirs: dict[str, Path], component, family) -> None:
    hashes = {k: folder_hash(tiny_checkpoint_dirs[k] / component.subfolder) for k in component.checkpoints}
    assert len(set(hashes.values())) == 1, hashes


@pytest.mark.parametrize("name", TINY_NAMES)
def test_builds_are_reproducible(name: str, tmp_path: Path) -> None:
    built = build_tiny(name, TEST_CHECKPOINTS)
    rebuilt = build_tiny(name, tmp_path)
    files = sorted(str(f.relative_to(built)) for f in built.rglob("*") if f.is_file() and f.name != STAMP)
    assert files == json.loads((rebuilt / STAMP).read_text())["files"]
    for f in files:
        assert (built / f).read_bytes() == (rebuilt / f).read_bytes(), f


def test_a_build_is_reused_until_stale(tmp_path: Path) -> None:
    name = TINY_NAMES[0]
    built = build_tiny(name, tmp_path)
    stamp = built / STAMP
    built_at = stamp.stat().st_mtime_ns
    assert build_tiny(name, tmp_path) == built and stamp.stat().st_mtime_ns == built_at  # reused, not rebuilt
    written = json.loads(stamp.read_text())["files"]
    (built / written[0]).unlink()
    build_tiny(name, tmp_path)  # a folder missing a file it was built with is rebuilt
    assert (built / written[0]).is_file() and stamp.stat().st_mtime_ns != built_at
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "version": BUILDER_VERSION - 1}))
    build_tiny(name, tmp_path)  # an older builder's folder is rebuilt
    assert json.loads(stamp.read_text())["version"] == BUILDER_VERSION
