"""Keep the stack's processes up, tied to their parent, and alone on their ports (issue 14).

- `Supervisor`: a thread that watches one process (tritonserver, the API) and restarts it when it dies, with a
  bounded backoff, logging the exit code and the restart count; `make serve` (stack/serve.py) and the Modal serving
  class (triton_modal.py `GroupServer`) use the same one.
- `dies_with_parent()`: a `preexec_fn` that makes a child get SIGKILL when the thread that started it exits, so a
  `kill -9` of `make serve` leaves no Triton or API orphaned on their ports.
- `port_problems()`: which of the ports a stack is about to bind are taken, and by which process.

The standard library only: triton_modal.py imports this at deploy time (tests/test_triton_modal.py checks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


def _log(message: str) -> None:
    print(f"[supervise] {message}", flush=True)


# ## Children that die with their parent

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here, not in the forked child: between fork and exec the child should only make the call.
_PRCTL = _libc_prctl()


def dies_with_parent() -> Callable[[], None] | None:
    """A `subprocess.Popen(preexec_fn=...)` that sets PR_SET_PDEATHSIG to SIGKILL in the child (None off Linux).

    The signal fires when the *thread* that forked the child exits, not the process: start children from the main
    thread or from a thread that lives as long as they should (a `Supervisor`'s). A parent that died between the fork
    and the prctl is caught by comparing the parent pid afterwards."""
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# ## Restarting a process that died


class Process(Protocol):
    """What a Supervisor drives: `start()` (re)starts and sets `process`; `stop()` stops it and is a no-op, apart from
    cleaning up what the process left (Triton's python-backend stubs), once it has exited."""

    process: subprocess.Popen | None

    def start(self) -> object: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n (1, 2, ...) of a process that keeps dying: first_s, doubling, at most max_s. A process
    that ran stable_s before it died starts over at first_s."""

    first_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0
    stable_s: float = 60.0

    def delay(self, consecutive: int) -> float:
        return min(self.max_s, self.first_s * self.factor ** max(consecutive - 1, 0))


def exit_reason(code: int) -> str:
    """Popen's returncode in words: a negative one is the signal that killed it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _always_ready() -> bool:
    return True


def process_age_s(pid: int) -> float:
    """How long process `pid` has run, from /proc (0 where /proc cannot say): a watch that begins after the start
    still counts the process's whole run toward `Backoff.stable_s`."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


@dataclass
class Supervisor:
    """Watches `target.process` from a thread of its own and restarts `target` when it exits, until `stop()`.

    After a restart it polls `ready` and logs when the process serves again. The thread also stops the target when
    asked to stop: a process it restarted is its child (`dies_with_parent`), which would get SIGKILL, not a clean stop,
    if the thread ended first."""

    name: str
    target: Process
    ready: Callable[[], bool] = _always_ready
    backoff: Backoff = field(default_factory=Backoff)
    poll_s: float = 0.2
    log: Callable[[str], None] = _log
    restarts: int = 0  # deaths seen, each answered by a restart (the count in the log line)
    ready_again: int = 0  # how many of those restarts became ready
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def watch(self) -> Supervisor:
        """Start watching the target, which must already be started."""
        self._thread = threading.Thread(target=self._run, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """No more restarts; the target is stopped (by the watching thread, else here)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.target.stop()

    def _run(self) -> None:
        process = self.target.process
        started = time.monotonic() - (process_age_s(process.pid) if process is not None else 0.0)
        consecutive = 0  # deaths since the target last ran stable_s
        since_restart: float | None = None  # waiting for readiness after a restart, since then
        try:
            while not self._stop.wait(self.poll_s):
                try:
                    process = self.target.process
                    code = None if process is None else process.poll()
                    if process is None or code is None:
                        if since_restart is not None and self.ready():
                            self.ready_again += 1
                            self.log(f"{self.name} ready again {time.monotonic() - since_restart:.1f}s after restart")
                            since_restart = None
                        continue
                    ran = time.monotonic() - started
                    consecutive = 1 if ran >= self.backoff.stable_s else consecutive + 1
                    delay = self.backoff.delay(consecutive)
                    self.restarts += 1
                    self.log(
                        f"{self.name} (pid {process.pid}) exited, {exit_reason(code)}, after {ran:.1f}s; "
                        f"restart {self.restarts} in {delay:.1f}s"
                    )
                    self.target.stop()  # what the dead process left: Triton's stubs in its process group
                    if self._stop.wait(delay):
                        break
                    started = time.monotonic()
                    self.target.start()
                    since_restart = started
                    restarted = self.target.process
                    self.log(f"{self.name} restarted (pid {restarted.pid if restarted is not None else '?'})")
                except Exception as exc:  # the watcher outlives any one failure; a failed start is retried
                    self.log(f"{self.name}: {type(exc).__name__}: {exc}")
        finally:
            if self._stop.is_set():
                self.target.stop()


# ## Ports: free, or held by whom


@dataclass(frozen=True)
class PortHolder:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def _socket_inodes(port: int) -> set[str]:
    """Inodes of this network namespace's TCP sockets bound to local `port` (listening or merely bound)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # sl local_address rem_address st ... inode: a TIME_WAIT row (inode 0) holds no process.
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def port_holders(port: int) -> list[PortHolder]:
    """The processes holding a TCP socket on local `port`, found through /proc (those of other users stay unseen)."""
    links = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    if not links:
        return []
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if not any(os.readlink(fd) in links for fd in fds):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or not ours to read
            continue
        holders.append(PortHolder(int(proc.name), command or "?"))
    return sorted(holders, key=lambda h: h.pid)


def port_in_use(port: int, host: str = "127.0.0.1") -> OSError | None:
    """The error binding host:port gives now, None when it is free. SO_REUSEADDR, as servers bind: a port left in
    TIME_WAIT by a stopped server counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def port_problems(ports: Iterable[tuple[str, str, int]]) -> list[str]:
    """One line per (what, host, port) that cannot be bound: the port, what it was meant for and who holds it."""
    problems = []
    seen: dict[int, str] = {}
    for what, host, port in ports:
        if port in seen:
            problems.append(f"port {port} is given twice: for {seen[port]} and for {what}")
            continue
        seen[port] = what
        error = port_in_use(port, host)
        if error is None:
            continue
        if error.errno != errno.EADDRINUSE:
            problems.append(f"port {port} ({what}) cannot be bound on {host}: {error}")
            continue
        holders = port_holders(port)
        by = "; ".join(map(str, holders)) if holders else "a process this user cannot see"
        problems.append(f"port {port} ({what}) on {host} is already in use, by {by}")
    return problems
