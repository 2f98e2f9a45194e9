"""A model update on a running stack (CPU profile): a changed checkpoint rebuilds only the component it touches,
and Triton switches to the new version while a stream of requests through the API keeps getting 200s.

Two ways the server learns of it: the updater loads what it rebuilt (`stack.update`, the local stack), or a build
elsewhere writes the repository and the serving side's watcher finds and loads it (`stack.repository_watch`, what a
Modal serving container runs against the engines Volume)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import torch
from safetensors.torch import load_file, save_file

from checkpoints.source import resolve
from model_repository.layout import CheckpointSource, build_repository
from stack.build import BuildDirs
from stack.repository_watch import RepositoryWatcher
from stack.triton_server import Ports, TritonServer
from stack.update import rebuild_family, update_family

from .stack_fixtures import free_port, running_api

BODY = {"prompt": "a red fox", "steps": 1, "width": 256, "height": 256, "seed": 3}
MAX_REQUESTS, MAX_SECONDS = 400, 120.0  # bounds of the request stream


def _version(onnx_dir: Path, model: str) -> int:
    return json.loads((onnx_dir / "manifest.json").read_text())["models"][model].get("version", 1)


def _link_or_copy(src: str, dst: str) -> None:
    """Artifacts hard-linked (export replaces folders, never rewrites files); the manifest (rewritten) copied."""
    (shutil.copy2 if src.endswith(".json") else os.link)(src, dst)


def _ready(triton: TritonServer, model: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/versions/{version}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


CHANGED = "flux_text_encoder"


def _perturb_text_encoder(checkpoint: Path, seed: int) -> None:
    """What a model update looks like on disk: new weights in one subfolder (the CLIP text encoder's: the
    cheapest component to re-export, and its pooled output conditions every image)."""
    path = checkpoint / "text_encoder" / "model.safetensors"
    weights = load_file(path)
    name = "final_layer_norm.bias"
    torch.manual_seed(seed)
    weights[name] = weights[name] + 0.5 * torch.randn_like(weights[name])
    path.unlink()  # a new inode: the served repository hard-links nothing from the checkpoint, but be explicit
    save_file(weights, path, metadata={"format": "pt"})


def _broken_version(repository: Path, model: str) -> int:
    """A build that went wrong: a next version of `model` whose graph is not ONNX (its model.py is the layout's)."""
    last = max(int(p.name) for p in (repository / model).iterdir() if p.name.isdigit())
    broken = repository / model / str(last + 1)
    broken.mkdir()
    shutil.copy2(repository / model / str(last) / "model.py", broken / "model.py")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    return last + 1


class _Stream:
    """Requests to /flux, one after another, from a thread, until stopped (bounded in count and time)."""

    def __init__(self, url: str) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,))

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as s:
            t0 = time.monotonic()
            while not self._stop.is_set() and len(self.statuses) < MAX_REQUESTS and time.monotonic() - t0 < MAX_SECONDS:
                self.statuses.append(s.post("/flux", json=BODY).status_code)

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=MAX_SECONDS)


def test_checkpoint_update_reloads_only_the_changed_component_without_losing_requests(
    stack_dirs, model_repository, tmp_path
) -> None:
    """One running stack, two updates of the CLIP text encoder under a stream of requests: first loaded by the
    updater, then by the watcher after a build elsewhere; then a broken build, which the watcher leaves unloaded."""
    # model_repository: the session's build, whose exported components this test starts from
    dirs = BuildDirs.under(tmp_path / "build")
    checkpoint = tmp_path / "flux-schnell"
    shutil.copytree(resolve("flux-schnell", "tiny", stack_dirs.checkpoints).path, checkpoint)
    # The session's exported components, hard-linked: unchanged sources are recognised by their manifest keys.
    shutil.copytree(stack_dirs.onnx, dirs.onnx, copy_function=_link_or_copy)
    label = "local:flux-schnell"  # what resolve() labels a local folder: its key (the update recomputes it)
    build_repository(dirs.repository, dirs.onnx, {"flux-schnell": CheckpointSource(checkpoint, label)}, "cpu", ["flux"])
    first_version = _version(dirs.onnx, CHANGED)
    record = tmp_path / "build.json"  # what a build writes last
    refreshes: list[float] = []
    paths = {"flux-schnell": checkpoint}

    triton = TritonServer(
        dirs.repository, dirs.backends, Ports(free_port(), free_port(), free_port()), tmp_path / "triton.log"
    ).start()
    try:
        triton.wait_ready(timeout_s=120)
        with running_api(triton.grpc_url, RYLA_GROUPS="flux") as url, httpx.Client(base_url=url, timeout=60) as c:
            images = [c.post("/flux", json=BODY)]
            assert images[0].status_code == 200, images[0].text
            # 1. The local stack's updater rebuilds and loads.
            with _Stream(url) as stream:
                _perturb_text_encoder(checkpoint, seed=0)
                update = update_family("flux", dirs, triton, checkpoint_paths=paths)
                assert (update.exported, update.reloaded) == ([CHANGED], [CHANGED])
                during = len(stream.statuses)
                time.sleep(1.0)  # requests keep flowing after the switch too
            assert during >= 3 and len(stream.statuses) > during
            assert stream.statuses.count(200) == len(stream.statuses), stream.statuses
            images.append(c.post("/flux", json=BODY))

            # A serving container's watcher, started against the repository as it is now.
            watcher = RepositoryWatcher(
                triton, triton.served_models(), refresh=lambda: refreshes.append(1), marker=record
            )
            assert watcher.stale() == []

            # 2. A build elsewhere; the watcher loads it once the build's record is written.
            with _Stream(url) as stream:
                _perturb_text_encoder(checkpoint, seed=1)
                assert rebuild_family("flux", dirs, checkpoint_paths=paths).exported == [CHANGED]
                # The repository changed but the build has not written its record: a build in progress.
                assert watcher.stale() == [CHANGED]
                assert watcher.poll() == []
                record.write_text(json.dumps({"built_at": time.time()}))
                assert watcher.poll() == [CHANGED]
                assert watcher.poll() == [] and len(refreshes) == 3  # loaded once; refreshed at every poll
                during = len(stream.statuses)
                time.sleep(1.0)
            assert during >= 3 and len(stream.statuses) > during
            assert stream.statuses.count(200) == len(stream.statuses), stream.statuses
            images.append(c.post("/flux", json=BODY))

            # 3. A build that left a broken version: the load fails, the version that served keeps serving, and the
            # next poll tries again (the watcher does not mark it loaded).
            _broken_version(dirs.repository, CHANGED)
            record.write_text(json.dumps({"built_at": time.time() + 1}))
            assert watcher.poll() == []
            assert watcher.stale() == [CHANGED]
            still = c.post("/flux", json=BODY)
            assert still.status_code == 200 and still.content == images[-1].content
    finally:
        triton.stop()

    assert _version(dirs.onnx, CHANGED) == first_version + 2
    # Each update's new weights serve: same request, another image each time.
    assert all(r.status_code == 200 for r in images)
    assert len({r.content for r in images}) == 3


def test_nothing_changed_reloads_nothing(stack_dirs, model_repository, tmp_path) -> None:
    dirs = BuildDirs.under(tmp_path / "build")
    shutil.copytree(stack_dirs.onnx, dirs.onnx, copy_function=_link_or_copy)
    checkpoint = resolve("flux-schnell", "tiny", stack_dirs.checkpoints).path
    label = "local:flux-schnell"
    build_repository(dirs.repository, dirs.onnx, {"flux-schnell": CheckpointSource(checkpoint, label)}, "cpu", ["flux"])
    # No Triton needed: an update with nothing stale loads nothing (a server that is not running would fail loudly).
    idle = TritonServer(dirs.repository, dirs.backends, Ports(free_port(), free_port(), free_port()))
    update = update_family("flux", dirs, idle, checkpoint_paths={"flux-schnell": checkpoint})
    assert update.exported == [] and update.reloaded == []
