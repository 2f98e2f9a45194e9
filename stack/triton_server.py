"""Start and stop a real `tritonserver`: the one bundled in the nvidia-pytriton wheel (design.md).

The wheel ships Triton 2.51 with the python backend only. We lay its backend files out in a backend directory,
put the wheel's bundled libraries on LD_LIBRARY_PATH and this interpreter's bin first on PATH, because the python
backend stub imports numpy (and our packages) from the environment it finds there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .supervise import dies_with_parent, port_holders


def pytriton_dir() -> Path:
    """Where the nvidia-pytriton wheel's files lie, found without importing pytriton (its client is not needed)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-pytriton is not installed: it carries the tritonserver we run")
    return Path(next(iter(spec.submodule_search_locations)))


def libpython_dir(backends_dir: Path) -> Path:
    """A folder holding only a link to this interpreter's libpython, for the python-backend stub to find first."""
    return backends_dir / "python" / "libpython"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    libs: Path
    backend_src: Path
    stub: Path

    @classmethod
    def from_pytriton(cls) -> TritonInstall:
        root = pytriton_dir() / "tritonserver"
        minor = f"{sys.version_info.major}.{sys.version_info.minor}"
        return cls(
            binary=root / "bin" / "tritonserver",
            libs=root.parent.parent / "nvidia_pytriton.libs",
            backend_src=root / "backends" / "python",
            stub=root / "python_backend_stubs" / minor / "triton_python_backend_stub",
        )

    def lay_out_backends(self, backends_dir: Path) -> Path:
        """Copy the python backend and the stub for this Python into `backends_dir/python`, and link this
        interpreter's libpython into `backends_dir/python/libpython` (see `env`)."""
        python_dir = backends_dir / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for src in (
            self.backend_src / "libtriton_python.so",
            self.backend_src / "triton_python_backend_utils.py",
            self.stub,
        ):
            dst = python_dir / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copy2(src, dst)
        soname = sysconfig.get_config_var("INSTSONAME") or ""
        libpython = Path(sysconfig.get_config_var("LIBDIR") or "") / soname
        if soname and libpython.is_file():
            link = libpython_dir(backends_dir) / soname
            link.parent.mkdir(exist_ok=True)
            if link.is_symlink() and link.resolve() != libpython.resolve():
                link.unlink()
            if not link.is_symlink():
                link.symlink_to(libpython)
        return backends_dir

    def env(self, backends_dir: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # The stub links libpython3.X.so by soname; without this interpreter's own first it can pick up the system's
        # libpython of another patch release, and stdlib extensions of this one then fail to import. Only that one
        # library goes first (a folder holding a link to it), not the interpreter's LIBDIR: that can be
        # /usr/lib/x86_64-linux-gnu, whose cuDNN (9.14 on the GPU machine) then shadows the one torch bundles (9.19),
        # and torch silently loses cuDNN attention (measured: 0.96 -> 1.66 ms per DiT block, flash instead).
        own = libpython_dir(backends_dir) if backends_dir is not None else None
        paths = (str(own) if own and own.is_dir() else "", str(self.libs), env.get("LD_LIBRARY_PATH", ""))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


@dataclass
class TritonServer:
    """One tritonserver process over a model repository, in explicit model control with strict readiness."""

    repository: Path
    backends_dir: Path
    ports: Ports = field(default_factory=Ports)
    log_path: Path | None = None
    load_models: tuple[str, ...] = ("*",)
    install: TritonInstall = field(default_factory=TritonInstall.from_pytriton)
    # Tie Triton to the thread that starts it (stack/supervise.py). Off on Modal: the container ends its processes,
    # and Modal runs the serving class's hooks on threads it does not promise to keep alive.
    dies_with_parent: bool = True
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def command(self) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends_dir}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.load_models),
            "--strict-readiness=true",
            # A model that fails to load is reported not ready instead of taking the server down.
            "--exit-on-error=false",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--log-verbose=0",
        ]

    def start(self) -> TritonServer:
        self.install.lay_out_backends(self.backends_dir)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by Popen
        self.process = subprocess.Popen(
            self.command(),
            env=self.install.env(self.backends_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, which its python-backend stubs join: `stop` can reach what a dead Triton left.
            start_new_session=True,
            # A killed parent (`kill -9` of `make serve`) takes Triton with it instead of leaving it on its ports.
            preexec_fn=dies_with_parent() if self.dies_with_parent else None,
        )
        return self

    def _ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def is_ready(self, models: tuple[str, ...] = ()) -> bool:
        """Server ready and, in explicit model control, each of `models` loaded (a failed load is not ready)."""
        return self._ok("/v2/health/ready") and all(self._ok(f"/v2/models/{m}/ready") for m in models)

    def _raise_failed_loads(self, models: tuple[str, ...]) -> None:
        """A model whose load failed will never be ready: say why now instead of waiting out the timeout."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                index = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return
        failed = {m["name"]: m.get("reason", "") for m in index if m.get("state") == "UNAVAILABLE" and m.get("reason")}
        failed = {name: why for name, why in failed.items() if name in models}
        if failed:
            raise RuntimeError("models failed to load: " + "; ".join(f"{n}: {w[:500]}" for n, w in failed.items()))

    def load_model(self, name: str, timeout_s: float = 300.0) -> None:
        """Explicit model control: (re)load `name` from the repository. On a loaded model Triton loads the new
        version while the old one keeps serving, then switches; returns once the load is done, raises if it failed."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/models/{name}/load", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"loading {name} failed: {exc.read().decode(errors='replace')[:500]}") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, or no answer within timeout_s
            raise RuntimeError(f"loading {name} did not finish: {exc}") from None

    def served_models(self) -> tuple[str, ...]:
        """The models this server was asked to load: every model folder of the repository for "*"."""
        if "*" in self.load_models:
            return tuple(sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt")))
        return self.load_models

    def wait_ready(self, timeout_s: float = 120.0, models: tuple[str, ...] | None = None) -> float:
        """Block until the server and `models` (default: all it serves) are ready; returns seconds waited. Raises
        if the server died or timed out."""
        models = self.served_models() if models is None else models
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; see {self.log_path}")
            if self.is_ready(models):
                self._require_own_port()
                return time.monotonic() - t0
            self._raise_failed_loads(models)
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f}s; see {self.log_path}")

    def _require_own_port(self) -> None:
        """Ready, but answered by this process? Another server on the port (an orphan of a killed stack) would
        answer ready while ours still loads its models, and ours would then fail to bind it."""
        holders = port_holders(self.ports.http)
        if self.process is None or not holders or self.process.pid in {h.pid for h in holders}:
            return  # not ours to check (another user's listener is not visible), or ours
        raise RuntimeError(
            f"port {self.ports.http} answers ready, but it is held by {'; '.join(map(str, holders))}, not by this "
            f"tritonserver (pid {self.process.pid})"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop Triton; once it has exited (killed, say), see that its python-backend stubs follow."""
        if self.process is None:
            return
        if self.process.poll() is not None:
            reap_group_later(self.process.pid)
            return
        # SIGINT lets Triton unload models and stop their python stubs; the group kill is the fallback.
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(self.process.pid)
            self.process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# The python backend names each stub's shared-memory region on the stub's command line.
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # The fields after the command's closing parenthesis: state, ppid, pgrp.
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie holds nothing but its pid
            members.append(int(proc.name))
    return members


def _shm_regions(pids: list[int]) -> set[Path]:
    regions = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for word in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                if word.startswith(SHM_REGION_PREFIX.encode()):
                    regions.add(Path("/dev/shm", word.decode()))
    return regions


def _kill_group(pgid: int) -> None:
    """SIGKILL the group, then unlink the shared memory of its stubs, which a stub killed this way cannot (a stub
    that is only slow to leave would otherwise leak its region in /dev/shm, a small tmpfs in containers)."""
    regions = _shm_regions(_group_members(pgid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for region in regions:
        region.unlink(missing_ok=True)


def _reap_group(pgid: int, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        _kill_group(pgid)


_reaping: set[int] = set()
_reaping_lock = threading.Lock()


def reap_group_later(pgid: int, grace_s: float = 10.0) -> None:
    """SIGKILL, after `grace_s`, what is left of the process group of a tritonserver that exited (start_new_session
    made its pid the group id, which the kernel does not hand out again while the group has members).

    Its stubs watch their parent and exit by themselves within about two seconds, unlinking their shared-memory
    regions in /dev/shm (which a SIGKILL would leak); the wait runs in a thread of its own, so a restart of Triton
    does not wait for it."""
    with _reaping_lock:
        if pgid in _reaping or not _group_alive(pgid):
            return
        _reaping.add(pgid)

    def reap() -> None:
        try:
            _reap_group(pgid, grace_s)
        finally:
            with _reaping_lock:
                _reaping.discard(pgid)

    threading.Thread(target=reap, name=f"reap-{pgid}", daemon=True).start()
