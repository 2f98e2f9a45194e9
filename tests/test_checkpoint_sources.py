"""Where checkpoints come from: the resolver's modes (tiny, local, hub), its refusal of unpinned hub revisions, and
the CLI that builds or reuses every registry checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from checkpoints import UnpinnedRevisionError, check_pinned, resolve
from checkpoints.__main__ import main as checkpoints_main
from registry import CHECKPOINTS


def test_resolve_modes(tiny_checkpoint_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_checkpoint_dirs["flux-dev"]
    tiny = resolve("flux-dev", "tiny", path.parent)
    assert tiny.path == path and tiny.label == "local:flux-dev"  # its registry key, never a server path
    local = resolve("flux-dev", "local", tmp_path, path=path)
    assert local.path == path and local.label == "local:flux-dev"
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        resolve("flux-dev", "local", tmp_path, path=tmp_path)
    with pytest.raises(ValueError, match="unknown checkpoint mode"):
        resolve("flux-dev", "ftp", tmp_path)
    with pytest.raises(KeyError):
        resolve("no-such-model", "tiny", tmp_path)


def test_hub_mode_refuses_an_unpinned_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RYLA_ALLOW_UNPINNED", raising=False)
    unpinned = dataclasses.replace(CHECKPOINTS["flux-dev"], revision="main")
    monkeypatch.setitem(CHECKPOINTS, "flux-dev", unpinned)
    with pytest.raises(UnpinnedRevisionError, match="not a pinned 40-hex commit"):
        resolve("flux-dev", "hub", tmp_path)
    assert not (tmp_path / "hub").exists()  # refused before any download
    check_pinned(dataclasses.replace(unpinned, revision="0123456789abcdef0123456789abcdef01234567"))
    monkeypatch.setenv("RYLA_ALLOW_UNPINNED", "1")
    check_pinned(unpinned)


def test_cli_reuses_built_checkpoints(tiny_checkpoint_dirs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = tiny_checkpoint_dirs["flux-dev"].parent
    checkpoints_main(["--mode", "tiny", "--root", str(root)])
    out = capsys.readouterr().out
    for key in tiny_checkpoint_dirs:
        assert f"[checkpoints] {key}: local:{key}" in out
