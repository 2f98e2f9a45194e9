"""Fixtures shared by the suite: tiny checkpoints and one family exported from them, cached under .cache/ so reruns
reuse them (the builders' stamps and the export manifest decide what is stale). They are the folders the served
stack is built from too (stack_fixtures.py: a real Triton and the API), so each is built once per run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = REPO_ROOT / ".cache" / "test-stack"  # stack.build.BuildDirs.under(STACK_DIR)
TEST_CHECKPOINTS = STACK_DIR / "checkpoints"
TEST_ONNX = STACK_DIR / "onnx"
# The family the export and engine-builder tests run their mechanics on (its exports are the smallest).
EXPORT_FAMILY = "flux"


@pytest.fixture(scope="session")
def tiny_checkpoint_dirs() -> dict[str, Path]:
    """Registry checkpoint key -> its tiny diffusers folder."""
    from checkpoints import resolve
    from registry import CHECKPOINTS

    return {key: resolve(key, "tiny", TEST_CHECKPOINTS).path for key in sorted(CHECKPOINTS)}


@pytest.fixture(scope="session")
def flux_onnx_dir(tiny_checkpoint_dirs: dict[str, Path]) -> Path:
    """The FLUX family exported to ONNX: <dir>/<triton_model>/model.onnx and <dir>/manifest.json (the served stack's
    export folder: tests that change an export copy it first)."""
    from export import export_family
    from registry import checkpoints_of

    family = EXPORT_FAMILY
    export_family(family, {c.key: tiny_checkpoint_dirs[c.key] for c in checkpoints_of(family)}, TEST_ONNX)
    return TEST_ONNX


@pytest.fixture()
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fails the test on any connection to an address outside loopback (a LoRA URL the rules should have refused);
    yields the loopback addresses connected to."""
    import ipaddress
    import socket

    connected: list[object] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0]).split("%", 1)[0]  # type: ignore[index]
            if not ipaddress.ip_address(host).is_loopback:
                pytest.fail(f"a test connected to {address}: only 127.0.0.1 may be a target")
            connected.append(address)
        return connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return connected


@pytest.fixture(scope="session", autouse=True)
def lora_store() -> Iterator[Path]:
    """The LoRA store every API of the suite reads (RYLA_LORA_STORE, also for the apps made in process), holding the
    sample LoRA of each LoRA route that the routes' sample requests name (stack.build.write_sample_loras)."""
    import os

    from checkpoints import resolve
    from registry import ROUTES
    from stack.build import BuildDirs, write_sample_loras

    store = BuildDirs.under(STACK_DIR).loras
    checkpoints = {r.checkpoint for r in ROUTES.values() if r.lora}
    write_sample_loras(store, {key: resolve(key, "tiny", TEST_CHECKPOINTS) for key in checkpoints})
    previous = os.environ.get("RYLA_LORA_STORE")
    os.environ["RYLA_LORA_STORE"] = str(store)
    yield store
    if previous is None:
        os.environ.pop("RYLA_LORA_STORE", None)
    else:
        os.environ["RYLA_LORA_STORE"] = previous
