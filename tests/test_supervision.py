"""Issue 14, "Nothing brings Triton back": `make serve` (python -m stack.serve) restarts a tritonserver that dies while
the API keeps answering (503 with Retry-After, then 200 again); a `kill -9` of `make serve` takes Triton, its python
backend stubs and the API with it; a taken port stops it before it builds, naming the holder; the Supervisor that
the Modal serving class shares restarts a real tritonserver.

One app group (flux), over the test stack's build folder, on free local ports; every process a test starts is
killed at its end, whatever happened."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.samples import sample_body
from registry import ROUTES
from stack.build import BuildDirs
from stack.supervise import Backoff, Supervisor, dies_with_parent, exit_reason, port_in_use, port_problems
from stack.triton_server import SHM_REGION_PREFIX, Ports, TritonServer, reap_group_later

from .fixtures import REPO_ROOT, STACK_DIR
from .stack_fixtures import VAE, free_port

PATH = "/flux"
GROUP = ROUTES[PATH].group
BODY = sample_body(ROUTES[PATH], steps=1, size=ROUTES[PATH].limits.min_size)


# ## Processes, as /proc sees them


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running: a zombie (dead, not yet reaped by whoever adopted it) does not count."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (stat := _stat(int(proc.name))) is not None and stat[1] == str(pid):
            found.append(int(proc.name))
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


@contextlib.contextmanager
def reaped(pids_of: list[int]) -> Iterator[list[int]]:
    """Whatever ends up in the list (and their descendants) is SIGKILLed at the end, however the test ended."""
    try:
        yield pids_of
    finally:
        for pid in [*pids_of, *(d for p in list(pids_of) for d in descendants(p))]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def in_group(pgid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and (st := _stat(int(p.name))) and st[2] == str(pgid)
    ]


def shm_regions(stubs: list[int]) -> list[str]:
    """The /dev/shm regions the python-backend stubs of a run use (named on their command lines)."""
    return [word for pid in stubs for word in cmdline(pid).split() if word.startswith(SHM_REGION_PREFIX)]


# ## make serve, on free ports


def serve_command(ports: list[int]) -> list[str]:
    api, http, grpc, metrics = ports
    return [
        sys.executable,
        "-m",
        "stack.serve",
        f"--build-dir={STACK_DIR}",
        f"--groups={GROUP}",
        f"--port={api}",
        f"--triton-http-port={http}",
        f"--triton-grpc-port={grpc}",
        f"--triton-metrics-port={metrics}",
    ]


@contextlib.contextmanager
def serving(ports: list[int], log: Path, pids: list[int], timeout_s: float = 180) -> Iterator[subprocess.Popen]:
    """`python -m stack.serve` until its API is ready; its pid goes into `pids` (killed by `reaped`)."""
    with log.open("ab") as out:
        serve = subprocess.Popen(serve_command(ports), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    pids.append(serve.pid)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"make serve not ready in {timeout_s:.0f}s:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{ports[0]}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        pids += descendants(serve.pid)  # Triton, its stubs, the API: killed at the end whatever happens
        yield serve
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                serve.kill()
        serve.wait()


def the_child(serve: subprocess.Popen, marker: str) -> int:
    (pid,) = (p for p in children(serve.pid) if marker in cmdline(p) and alive(p))
    return pid


def generate(api_port: int, timeout_s: float = 30) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{api_port}{PATH}", json=BODY, timeout=timeout_s)


@pytest.fixture()
def ports() -> list[int]:
    return [free_port() for _ in range(4)]


def test_triton_killed_is_restarted_while_the_api_keeps_running(model_repository, ports, tmp_path) -> None:
    log = tmp_path / "serve.log"
    with reaped([]) as pids, serving(ports, log, pids) as serve:
        api, triton = the_child(serve, "-m api"), the_child(serve, "tritonserver")
        stubs = children(triton)
        regions = shm_regions(stubs)
        assert stubs and regions, cmdline(triton)
        assert generate(ports[0]).status_code == 200

        os.kill(triton, signal.SIGKILL)
        killed = time.monotonic()
        down = generate(ports[0], timeout_s=5)
        to_503 = time.monotonic() - killed
        assert down.status_code == 503 and down.json()["error"]["code"] == "backend_unavailable", down.text
        assert int(down.headers["retry-after"]) > 0
        assert to_503 < 1.0

        # Back without a restart of the API: Triton is started again and the API's channel reconnects. 15 s: one
        # Triton start of the flux group (about 12 s on 2 idle cores) and the backoff; longer only when this run's first
        # start already took longer (a machine busy with other work), as a restart loads the same models.
        budget = max(15.0, float(re.search(r"Triton ready in ([\d.]+)s", log.read_text()).group(1)) + 5.0)
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (r := generate(ports[0], timeout_s=5)).status_code == 200:
                    break
                assert r.status_code == 503, r.text
            assert time.monotonic() - killed < budget, log.read_text()
            time.sleep(0.2)
        to_200 = time.monotonic() - killed
        assert to_200 < budget + 5  # the last request, sent in time, answered
        assert alive(api) and the_child(serve, "-m api") == api
        restarted = the_child(serve, "tritonserver")
        pids.append(restarted)
        assert restarted != triton and serve.poll() is None
        # The dead Triton's stubs left by themselves, their shared memory with them.
        deadline = time.monotonic() + 10
        while any(alive(p) for p in stubs) or any(Path("/dev/shm", r).exists() for r in regions):
            assert time.monotonic() < deadline, [cmdline(p) for p in stubs if alive(p)]
            time.sleep(0.2)
        text = log.read_text()
        assert f"tritonserver (pid {triton}) exited, killed by SIGKILL" in text and "restart 1 in 0.5s" in text
        assert "tritonserver ready again" in text
        print(f"\nkill -> 503: {to_503:.2f}s; kill -> 200: {to_200:.2f}s, budget {budget:.1f}s (same API pid {api})")
        print("".join(line for line in text.splitlines(keepends=True) if line.startswith("[supervise]")), end="")

        # The API dies too: it is restarted, Triton untouched.
        os.kill(api, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            with contextlib.suppress(httpx.TransportError):
                if generate(ports[0], timeout_s=5).status_code == 200:
                    break
            assert time.monotonic() - killed < 30, log.read_text()
            time.sleep(0.2)
        print(f"API kill -9 -> 200: {time.monotonic() - killed:.2f}s")
        pids.append(the_child(serve, "-m api"))
        assert the_child(serve, "tritonserver") == restarted and f"API (pid {api}) exited" in log.read_text()

        serve.send_signal(signal.SIGINT)
        assert serve.wait(60) == 0, log.read_text()
    assert "[serve] stopped" in log.read_text()
    assert not any(alive(p) for p in pids)


def test_serve_killed_takes_its_processes_with_it(model_repository, ports, tmp_path) -> None:
    log = tmp_path / "serve.log"
    with reaped([]) as pids:
        with serving(ports, log, pids) as serve:
            triton = the_child(serve, "tritonserver")
            run = descendants(serve.pid)  # Triton, its stubs, the API
            regions = shm_regions(children(triton))
            assert len(run) >= 3 and regions
            serve.kill()
            killed = time.monotonic()
            serve.wait()
            while any(alive(p) for p in run) or any(port_in_use(p) for p in ports):
                assert time.monotonic() - killed < 10, [cmdline(p) for p in run if alive(p)]
                time.sleep(0.1)
            gone = time.monotonic() - killed
            # The stubs exited by themselves (their parent gone), unlinking their shared memory.
            assert not any(Path("/dev/shm", r).exists() for r in regions)
            print(f"\nkill -9 of make serve -> its {len(run)} processes gone, ports free: {gone:.2f}s")
        # A new make serve on the same ports starts and answers; `kill` (SIGTERM) stops it as Ctrl-C does.
        with serving(ports, log, pids) as serve:
            assert generate(ports[0]).status_code == 200
            run = descendants(serve.pid)
            serve.terminate()
            assert serve.wait(60) == 0, log.read_text()
            stopped = time.monotonic()
            while any(alive(p) for p in run) or any(port_in_use(p) for p in ports):
                assert time.monotonic() - stopped < 5, [cmdline(p) for p in run if alive(p)]
                time.sleep(0.1)


def test_serve_refuses_a_taken_port_naming_its_holder(ports) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        command = serve_command([ports[0], ports[1], taken, ports[3]])
        t0 = time.monotonic()
        out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"port {taken} (Triton gRPC, --triton-grpc-port) on 127.0.0.1 is already in use" in out.stderr
    assert f"pid {os.getpid()} (" in out.stderr  # this test's own socket, with its command line
    assert "[build]" not in out.stdout  # refused before anything was built
    assert elapsed < 30
    print(f"\ntaken port refused in {elapsed:.2f}s")


def test_port_problems_names_duplicates_and_free_ports_pass() -> None:
    a, b = free_port(), free_port()
    assert port_problems([("x", "127.0.0.1", a), ("y", "127.0.0.1", b)]) == []
    assert port_problems([("x", "127.0.0.1", a), ("y", "127.0.0.1", a)]) == [
        f"port {a} is given twice: for x and for y"
    ]


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_wait_ready_refuses_another_process_answering_on_its_port(tmp_path) -> None:
    """The orphan case: something else answers ready on Triton's HTTP port while ours is still starting."""
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    server = TritonServer(tmp_path, tmp_path, Ports(other.server_address[1], free_port(), free_port()))
    server.process = subprocess.Popen(["sleep", "30"])  # stands for our tritonserver, still loading
    try:
        with pytest.raises(RuntimeError, match=f"held by pid {os.getpid()} .*not by this tritonserver"):
            server.wait_ready(timeout_s=10, models=())
    finally:
        server.process.kill()
        server.process.wait()
        other.shutdown()
        other.server_close()


def test_backoff_doubles_to_its_bound() -> None:
    assert [Backoff().delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert exit_reason(-9) == "killed by SIGKILL" and exit_reason(3) == "exit code 3"


def test_a_child_dies_with_the_thread_that_started_it() -> None:
    """PR_SET_PDEATHSIG follows the thread: why a Supervisor starts and stops its process from its own thread."""
    started: list[subprocess.Popen] = []
    thread = threading.Thread(
        target=lambda: started.append(subprocess.Popen(["sleep", "30"], preexec_fn=dies_with_parent()))
    )
    thread.start()
    thread.join()
    (child,) = started
    try:
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_a_stub_left_behind_by_a_dead_triton_is_killed_and_its_shared_memory_unlinked() -> None:
    """A stub that outlives its tritonserver past the grace (stuck in its interpreter's exit, say) is SIGKILLed,
    which leaves it no chance to unlink its region: the reaper does it, so a restart loop cannot fill /dev/shm."""
    region = Path("/dev/shm", f"{SHM_REGION_PREFIX}test_{os.getpid()}_{time.monotonic_ns()}")
    region.write_bytes(b"\0" * 4096)
    # A process group like a dead Triton's: a leader that has exited, a stub that ignores SIGTERM and stays.
    stub = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.Popen(sys.argv[1:])",
            sys.executable,
            "-c",
            stub,
            region.name,
        ],
        start_new_session=True,
    )
    try:
        assert leader.wait(10) == 0
        deadline = time.monotonic() + 5
        while not (stubs := [p for p in in_group(leader.pid) if region.name in cmdline(p)]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reap_group_later(leader.pid, grace_s=0.5)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in stubs) or region.exists():
            assert time.monotonic() < deadline, [cmdline(p) for p in stubs if alive(p)]
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        region.unlink(missing_ok=True)


def test_supervisor_restarts_a_killed_tritonserver(model_repository: Path, stack_dirs: BuildDirs, tmp_path) -> None:
    """The Modal serving class's watcher (triton_modal.GroupServer: `Supervisor` over `triton_server(group)`) against
    a real tritonserver serving one model."""
    server = TritonServer(
        repository=model_repository,
        backends_dir=stack_dirs.backends,
        ports=Ports(free_port(), free_port(), free_port()),
        log_path=tmp_path / "tritonserver.log",
        load_models=(VAE,),
    ).start()
    lines: list[str] = []
    supervisor = Supervisor("tritonserver", server, ready=lambda: server.is_ready((VAE,)), log=lines.append)
    with reaped([server.process.pid]) as pids:
        try:
            server.wait_ready(timeout_s=120)
            supervisor.watch()
            for restart, delay in ((1, 0.5), (2, 1.0)):  # a second death soon after: the delay doubles
                first = server.process.pid
                os.kill(first, signal.SIGKILL)
                killed = time.monotonic()
                while supervisor.ready_again < restart:
                    assert time.monotonic() - killed < 60, "\n".join(lines)
                    time.sleep(0.1)
                pids.append(server.process.pid)
                assert server.process.pid != first and server.is_ready((VAE,))
                assert supervisor.restarts == restart
                assert any(f"(pid {first}) exited, killed by SIGKILL" in ln and f"in {delay}s" in ln for ln in lines)
                print(f"\nrestart {restart}: ready {time.monotonic() - killed:.2f}s after the kill")
            restarted = server.process
            supervisor.stop()
            # Stopped by SIGINT from the watching thread (exit 0), not SIGKILLed by that thread's end.
            assert restarted.poll() == 0, "\n".join(lines)
            assert supervisor.restarts == 2
        finally:
            supervisor.stop()
            server.stop()
