"""Serve what a build elsewhere wrote into the model repository, without a restart.

On Modal the build function writes new model versions to the engines Volume in another container; a serving
container sees them only after it reloads the Volume, and Triton (explicit model control) only after it is asked to
load them. `RepositoryWatcher.poll` does both: refresh the view of the repository, find the models whose folders
changed since Triton loaded them, and load those (components before pipelines) while the old versions keep serving.

A build writes its record (`build.json`) after the repository is laid out; with `marker` set, the watcher acts only
when that record changed, so it never loads from a build still in progress (a Volume may commit in the background).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .triton_server import TritonServer


def _log(message: str) -> None:
    print(f"[watch] {message}", flush=True)


def load_order(models: Iterable[str]) -> list[str]:
    """Components first, so a reloaded pipeline model never meets an old component it was not built against."""
    return sorted(models, key=lambda name: (name.endswith("_pipeline"), name))


def model_fingerprint(model_dir: Path) -> str | None:
    """What Triton would load from `model_dir`: every file's path, size and modification time (a new version folder,
    a rewritten config.pbtxt or a rebuilt plan all change it). None when the folder is gone."""
    if not (model_dir / "config.pbtxt").is_file():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError:
        return None


@dataclass
class RepositoryWatcher:
    """Loads the changed models of `models` into `triton`. Make it right after Triton loaded them: what is on disk
    then is what serves."""

    triton: TritonServer
    models: tuple[str, ...]
    # Brings the repository up to date before each look (Modal: the Volumes' reload()); nothing for a local folder.
    refresh: Callable[[], None] = lambda: None
    # A file a build writes last (its record): nothing is loaded until it changes.
    marker: Path | None = None
    loaded: dict[str, str | None] = field(init=False)  # model -> fingerprint Triton serves
    _marker_seen: bytes | None = field(init=False)

    def __post_init__(self) -> None:
        self.loaded = self._fingerprints()
        self._marker_seen = _read(self.marker)

    def _fingerprints(self) -> dict[str, str | None]:
        return {name: model_fingerprint(self.triton.repository / name) for name in self.models}

    def _changed(self, now: dict[str, str | None]) -> list[str]:
        return load_order(name for name in self.models if now[name] is not None and now[name] != self.loaded[name])

    def stale(self) -> list[str]:
        """The models whose folders differ from what Triton loaded, in load order (no refresh)."""
        return self._changed(self._fingerprints())

    def poll(self) -> list[str]:
        """Refresh, then load every changed model; returns those Triton now serves anew. A load that fails is logged
        and tried again at the next poll; Triton keeps serving the version it had."""
        self.refresh()
        if self.marker is not None:
            marker = _read(self.marker)
            if marker is None or marker == self._marker_seen:
                return []
        done = []
        failed = False
        now = self._fingerprints()
        for name in self._changed(now):
            try:
                self.triton.load_model(name)
            except RuntimeError as exc:
                _log(f"{name}: new version failed to load, the old one keeps serving: {exc}")
                failed = True
                continue
            self.loaded[name] = now[name]
            done.append(name)
            _log(f"{name}: new version loaded and serving")
        if self.marker is not None and not failed:
            self._marker_seen = marker
        return done

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Poll every `interval_s` until `stop` is set; an error in one poll (say, a Volume that cannot reload while
        a file on it is open) is logged and the next poll tries again."""
        while not stop.wait(interval_s):
            try:
                self.poll()
            except Exception as exc:  # the watcher outlives any one failure: serving goes on regardless
                _log(f"poll failed, trying again in {interval_s:.0f}s: {type(exc).__name__}: {exc}")

    def start(self, interval_s: float) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(interval_s, stop), name="repository-watch", daemon=True)
        thread.start()
        return thread, stop
