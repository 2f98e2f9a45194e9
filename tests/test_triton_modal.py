"""triton_modal.py before a deploy: the objects it defines and hands Modal, read offline from the module itself
(its source, its option tables, the public info of its functions), never from Modal's private state.

What a deploy or a container would do (build the image, create the Volumes and Secrets, start Triton on an H100) needs
Modal's servers and cannot run here; these tests pin down everything decided before that point."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import modal
import pytest

import triton_modal
from registry import GROUPS, ROUTES, pipeline_model_of, routes_of

REPO_ROOT = Path(__file__).resolve().parent.parent
GROUPS_WITH_ROUTES = sorted(g for g in GROUPS if routes_of(g))
SOURCE = ast.parse(Path(triton_modal.__file__).read_text())


def _call(node: ast.expr) -> tuple[str, list[ast.expr], dict[str, ast.expr]]:
    """A decorator or call as (dotted name, positional arguments, keyword arguments; ** unpacked under "**")."""
    assert isinstance(node, ast.Call), ast.dump(node)
    return ast.unparse(node.func), node.args, {k.arg or "**": k.value for k in node.keywords}


def _literal_group(node: ast.expr, helper: str) -> str:
    """`helper("<group>")` -> the group."""
    name, args, _ = _call(node)
    assert name == helper and len(args) == 1 and isinstance(args[0], ast.Constant), ast.unparse(node)
    return args[0].value


def _serving_classes() -> dict[str, ast.ClassDef]:
    return {
        c.name: c
        for c in SOURCE.body
        if isinstance(c, ast.ClassDef) and any(ast.unparse(b) == "GroupServer" for b in c.bases)
    }


def _build_functions() -> dict[str, ast.FunctionDef]:
    return {
        f.name: f
        for f in SOURCE.body
        if isinstance(f, ast.FunctionDef) and any(ast.unparse(d).startswith("app.function(") for d in f.decorator_list)
    }


def test_imports_offline_without_the_heavy_stages() -> None:
    # A fresh interpreter, Modal's server unreachable: the deploy-time import needs no network and none of torch,
    # diffusers, the API or export (they run in the containers only).
    code = (
        "import sys, triton_modal\n"
        "heavy = ('torch', 'diffusers', 'fastapi', 'tritonclient', 'export', 'api', 'model_repository')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "MODAL_SERVER_URL": "http://127.0.0.1:9", "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_one_serving_class_per_group_with_routes_written_out() -> None:
    """Each registry group with routes has its class, named for it, whose decorators and `group` all say that group
    (a copy-paste that serves one group with another's resources fails here); no class is left over."""
    classes = _serving_classes()
    assert set(classes) == {triton_modal.serving_class_name(g) for g in GROUPS_WITH_ROUTES}
    for name, node in classes.items():
        (group_assign,) = (s for s in node.body if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == "group")
        group = group_assign.value.value
        assert name == triton_modal.serving_class_name(group)
        cls_decorator, concurrent = node.decorator_list
        assert _call(cls_decorator)[0] == "app.cls" and _call(concurrent)[0] == "modal.concurrent"
        assert _literal_group(_call(cls_decorator)[2]["**"], "serving_options") == group
        assert _literal_group(_call(concurrent)[2]["**"], "concurrency") == group
        (web,) = (s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "web")
        (endpoint,) = web.decorator_list
        assert _call(endpoint)[0] == "modal.asgi_app"
        assert _literal_group(_call(endpoint)[2]["label"], "web_label") == group
        # Modal's container finds the class by its global name in this module.
        assert getattr(triton_modal, name) is triton_modal.SERVING_CLASSES[group]
        assert isinstance(triton_modal.SERVING_CLASSES[group], modal.Cls)
    assert set(triton_modal.SERVING_CLASSES) == set(GROUPS_WITH_ROUTES)


def test_one_build_function_per_group_with_routes_written_out() -> None:
    functions = _build_functions()
    assert set(functions) == {triton_modal.build_function_name(g) for g in GROUPS_WITH_ROUTES}
    for name, node in functions.items():
        (decorator,) = node.decorator_list
        assert ast.unparse(decorator) == "app.function(**BUILD_OPTIONS)"
        (ret,) = (s for s in node.body if isinstance(s, ast.Return))
        call, args, _ = _call(ret.value)
        assert call == "build_group" and name == triton_modal.build_function_name(args[0].value)
        function = triton_modal.BUILD_FUNCTIONS[args[0].value]
        assert getattr(triton_modal, name) is function and isinstance(function, modal.Function)
    assert set(triton_modal.BUILD_FUNCTIONS) == set(GROUPS_WITH_ROUTES)


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_serving_resources_come_from_the_registry(group: str) -> None:
    spec = GROUPS[group]
    options = triton_modal.serving_options(group)
    assert options["gpu"] == spec.gpu == "H100"
    assert (
        options["startup_timeout"] == spec.startup_timeout_s and options["scaledown_window"] == spec.scaledown_window_s
    )
    # A request may run as long as the slowest route of the group allows, plus the API's own work.
    assert options["timeout"] == max(r.timeout_s for r in routes_of(group)) + triton_modal.REQUEST_MARGIN_S
    assert options["enable_memory_snapshot"] is True
    # The API's gate holds max_concurrency generations and max_queue waiting; the autoscaler targets the former.
    assert triton_modal.concurrency(group) == {
        "max_inputs": spec.max_concurrency + spec.max_queue + triton_modal.SERVICE_HEADROOM,
        "target_inputs": spec.max_concurrency,
    }
    # Only the API keys: serving reads every weight from the Volume and needs no hub token.
    assert options["secrets"] == [triton_modal.api_keys_secret]
    assert {str(p): v.name for p, v in options["volumes"].items()} == {
        "/vol/checkpoints": "ryla-checkpoints",
        "/vol/engines": "ryla-engines",
        "/vol/compile-cache": "ryla-compile-cache",
        "/vol/loras": "ryla-loras",
    }
    # Weights, engines and LoRAs are read, never written, when serving; only the compile caches grow.
    assert {str(p) for p in triton_modal.READ_ONLY_WHEN_SERVING} == {"/vol/checkpoints", "/vol/engines", "/vol/loras"}


def test_serving_lifecycle_is_snapshot_enter_exit() -> None:
    (server,) = (c for c in SOURCE.body if isinstance(c, ast.ClassDef) and c.name == "GroupServer")
    decorators = {
        f.name: [ast.unparse(d) for d in f.decorator_list] for f in server.body if isinstance(f, ast.FunctionDef)
    }
    assert decorators["import_cpu_side"] == ["modal.enter(snap=True)"]  # CPU-only imports, in the memory snapshot
    assert decorators["start"] == ["modal.enter()"]  # Triton, the warm-up and the API: after the restore
    assert decorators["stop"] == ["modal.exit()"]


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_build_functions_run_on_a_gpu_with_their_volumes_writable(group: str) -> None:
    info = triton_modal.BUILD_FUNCTIONS[group].info()  # Modal's public view of the function as defined
    assert info.gpus == [("H100", 1)] and info.timeout == triton_modal.BUILD_TIMEOUT_S
    assert {path: (v.name, v.read_only) for path, v in info.volumes.items()} == {
        "/vol/checkpoints": ("ryla-checkpoints", False),
        "/vol/engines": ("ryla-engines", False),
        "/vol/loras": ("ryla-loras", False),  # the sample LoRAs of LoRA routes
    }
    assert info.secrets == ["modal.Secret.from_name('ryla-hf-token')"]


def test_serving_refuses_to_start_without_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.settings import Settings

    with pytest.raises(RuntimeError, match="refusing to serve without API keys"):
        triton_modal.require_api_keys(Settings(api_keys=()))
    triton_modal.require_api_keys(Settings(api_keys=("k1",)))
    # The container's enter checks the keys the Secret gave it before it starts anything.
    monkeypatch.delenv("RYLA_API_KEYS", raising=False)

    class Server(triton_modal.GroupServer):
        group = GROUPS_WITH_ROUTES[0]

    server = Server()
    with pytest.raises(RuntimeError, match="ryla-api-keys"):
        server.start()
    assert not hasattr(server, "triton")


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_triton_starts_in_explicit_mode_with_the_group_models_only(group: str) -> None:
    command = triton_modal.triton_server(group).command()
    assert command[0] == "/opt/tritonserver/bin/tritonserver"
    assert f"--model-repository=/vol/engines/{group}/model_repository" in command
    assert "--backend-directory=/opt/tritonserver/backends" in command
    assert "--model-control-mode=explicit" in command and "--strict-readiness=true" in command
    loaded = [arg.removeprefix("--load-model=") for arg in command if arg.startswith("--load-model=")]
    assert loaded == list(triton_modal.group_plan(group).models)
    # The image's own backends and library path are used as they are.
    install = triton_modal.NgcTriton.in_image()
    assert install.lay_out_backends(Path("/opt/tritonserver/backends")) == Path("/opt/tritonserver/backends")
    assert install.env().get("LD_LIBRARY_PATH") == os.environ.get("LD_LIBRARY_PATH")


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_the_models_served_are_those_the_build_lays_out(group: str, tmp_path: Path) -> None:
    from model_repository.layout import CheckpointSource, build_repository

    plan = triton_modal.group_plan(group)
    assert set(plan.pipelines) == {pipeline_model_of(r.path) for r in routes_of(group)}
    sources = {k: CheckpointSource(tmp_path / k, f"hub:test/{k}@0") for k in plan.checkpoints}
    loras = {k: tmp_path / f"{k}.safetensors" for k in plan.loras}
    written = build_repository(tmp_path / "repo", tmp_path / "onnx", sources, "gpu", plan.families, loras)
    assert set(plan.models) <= set(written)
    # Every component laid out for the group's checkpoints is loaded: a pipeline calls them by BLS.
    components = set(written) - {p.triton_model for f in plan.families for p in triton_modal.FAMILIES[f].pipelines}
    assert components == set(plan.components)


def test_a_group_merges_the_loras_its_components_name() -> None:
    for group in GROUPS_WITH_ROUTES:
        plan = triton_modal.group_plan(group)
        named = {c.merged_lora for f in plan.families for c in triton_modal.FAMILIES[f].components if c.merged_lora}
        wanted = {
            c.merged_lora
            for f in plan.families
            for c in triton_modal.FAMILIES[f].components
            if c.merged_lora and set(c.checkpoints) & set(plan.checkpoints)
        }
        assert set(plan.loras) == wanted <= named
    assert triton_modal.group_plan("qwen-image").loras == ("qwen-image-lightning",)


def test_the_build_refuses_floating_revisions_naming_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from checkpoints.source import ALLOW_UNPINNED_ENV, UnpinnedRevisionError

    monkeypatch.delenv(ALLOW_UNPINNED_ENV, raising=False)
    plan = triton_modal.group_plan("qwen-image")
    with pytest.raises(UnpinnedRevisionError) as e:
        triton_modal.require_pinned(plan)
    for key in (*plan.checkpoints, *plan.loras):
        assert key in str(e.value)
    assert "families/<folder>/__init__.py" in str(e.value)
    monkeypatch.setenv(ALLOW_UNPINNED_ENV, "1")
    triton_modal.require_pinned(plan)


class _OfflineVolume:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


def test_build_lays_out_the_gpu_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A group's build body with the tiny checkpoints standing in for the hub: refused while unpinned, then the GPU
    profile's repository and a build record on the engines Volume, both Volumes committed."""
    import checkpoints.source as source
    from checkpoints.source import ALLOW_UNPINNED_ENV, UnpinnedRevisionError
    from stack import build

    group = GROUPS_WITH_ROUTES[0]
    from tests.fixtures import TEST_CHECKPOINTS as tiny_root

    resolve_tiny = source.resolve
    monkeypatch.setattr(build, "resolve", lambda key, mode, root, path=None: resolve_tiny(key, "tiny", tiny_root))
    volumes = {name: _OfflineVolume() for name in ("checkpoints_volume", "engines_volume", "loras_volume")}
    for name, volume in volumes.items():
        monkeypatch.setattr(triton_modal, name, volume)
    monkeypatch.setattr(triton_modal, "ENGINES_DIR", tmp_path)
    monkeypatch.setattr(triton_modal, "LORAS_DIR", tmp_path / "loras")
    monkeypatch.delenv(ALLOW_UNPINNED_ENV, raising=False)

    plan = triton_modal.group_plan(group)
    with pytest.raises(UnpinnedRevisionError, match=plan.checkpoints[0]):
        triton_modal.build_group(group)
    record = triton_modal.build_group(group, allow_unpinned=True)
    assert ALLOW_UNPINNED_ENV not in os.environ  # the escape hatch was for that build only
    repository = tmp_path / group / "model_repository"
    assert record["models"] == list(plan.models)
    assert sorted(p.name for p in repository.iterdir()) == sorted(plan.models)
    assert all("KIND_GPU" in (repository / m / "config.pbtxt").read_text() for m in plan.models)
    assert (tmp_path / group / "build.json").is_file() and record["engines"] == {}  # torch on the GPU: no plans
    assert volumes["checkpoints_volume"].commits == 1 and volumes["engines_volume"].commits == 1
    assert volumes["loras_volume"].commits == 1


def test_gpu_dependencies_follow_pyproject() -> None:
    """The image installs pyproject's pins (torch resolves to its CUDA wheel there) minus what Modal or the NGC image
    provide: a pin bumped in pyproject.toml must be bumped in triton_modal.py too."""
    pinned = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    provided = {"modal", "nvidia-pytriton"}
    expected = [d for d in pinned if not any(d.startswith(p) for p in provided)]
    assert list(triton_modal.GPU_PYTHON_PACKAGES) == expected
    assert triton_modal.TENSORRT_PACKAGE.startswith("tensorrt-cu13==")  # CUDA 13, like the torch wheel and the image


def test_our_packages_are_the_projects() -> None:
    """Every package pyproject installs is mounted into the containers (perf/ aside: it runs on the benchmark
    machine), so a new shared package cannot be forgotten there."""
    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.removesuffix("*") for p in include["include"]}
    assert set(triton_modal.OUR_PACKAGES) == packages - {"perf"}


def test_group_names_map_to_python_and_dns_names() -> None:
    assert triton_modal.serving_class_name("qwen-edit") == "QwenEditServer"
    assert triton_modal.build_function_name("qwen-edit") == "build_qwen_edit"
    assert triton_modal.web_label("qwen-edit") == "ryla-qwen-edit"
    assert triton_modal.serving_class_name("seedvr2") == "Seedvr2Server"


def test_cold_start_clock_and_phase_metric() -> None:
    from prometheus_client import generate_latest

    from api.app import create_app
    from api.settings import Settings

    started = triton_modal.process_started_at()
    assert time.time() - 3600 < started <= time.time()
    state = create_app(Settings(groups=(GROUPS_WITH_ROUTES[0],))).state.api
    state.record_cold_start_phase("triton_ready", 81.5)
    state.record_cold_start_phase("first_image", 95.25)
    text = generate_latest(state.metrics.registry).decode()
    assert 'ryla_cold_start_phase_seconds{phase="triton_ready"} 81.5' in text
    assert 'ryla_cold_start_phase_seconds{phase="first_image"} 95.25' in text
    assert "ryla_cold_start_seconds 0.0" in text  # the API's own first-answer gauge is unchanged


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_warm_up_bodies_are_valid_requests(path: str) -> None:
    from api.samples import sample_body
    from api.schemas import request_model

    route = ROUTES[path]
    warm = request_model(route).model_validate(sample_body(route, steps=triton_modal.WARMUP_STEPS))
    assert warm.steps == triton_modal.WARMUP_STEPS


class _StandInTriton:
    """What GroupServer.start needs of `triton_server(group)`, over a real process (`sleep`) it can lose."""

    grpc_url = "127.0.0.1:9"

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> _StandInTriton:
        self.process = subprocess.Popen(["sleep", "60"])
        self.starts += 1
        return self

    def wait_ready(self, timeout_s: float, models: tuple[str, ...]) -> float:
        return 0.0

    def is_ready(self, models: tuple[str, ...] = ()) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def test_serving_class_supervises_triton_from_start_to_stop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GroupServer.start watches the Triton it started and restarts it when it dies; stop ends the watch, then
    Triton. Triton, the warm-up and the Volume commit are stand-ins: they need a GPU container and Modal."""
    group = GROUPS_WITH_ROUTES[0]
    triton = _StandInTriton(tmp_path / "model_repository")
    monkeypatch.setenv("RYLA_API_KEYS", "k1")
    monkeypatch.setattr(triton_modal, "triton_server", lambda g: triton)
    monkeypatch.setattr(triton_modal.GroupDirs, "root", property(lambda self: tmp_path))
    triton.repository.mkdir()

    async def warm_up(group_: str, app_: object, api_key: str | None = None) -> list[triton_modal.WarmUp]:
        return [triton_modal.WarmUp(r.path, 200, 0.0, time.time()) for r in routes_of(group_)]

    monkeypatch.setattr(triton_modal, "warm_up", warm_up)
    monkeypatch.setattr(triton_modal, "compile_cache_volume", type("Volume", (), {"commit": lambda self: None})())

    class Server(triton_modal.GroupServer):
        pass

    Server.group = group
    server = Server()
    try:
        server.start()
        supervisor = server.supervisor
        assert supervisor.target is triton and triton.starts == 1
        first = triton.process
        first.kill()
        deadline = time.monotonic() + 10
        while supervisor.ready_again < 1:
            assert time.monotonic() < deadline, "the watcher did not restart Triton"
            time.sleep(0.05)
        assert triton.starts == 2 and triton.process is not first and triton.is_ready()
        restarted = triton.process
        server.stop()
        assert supervisor._thread is not None and not supervisor._thread.is_alive()  # the watch has ended
        assert restarted.poll() is not None and triton.starts == 2  # stopped, and not started again
    finally:
        server.stop()
        if triton.process is not None and triton.process.poll() is None:
            triton.process.kill()


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_timeouts_nest_modal_over_the_api_over_triton(group: str) -> None:
    """Each layer gives up before the one above it: Modal's request limit > the API's answer (its deadline, its
    routes' limits, its body and header reads); the API's gRPC deadline, which cancels the call, bounds Triton's
    part."""
    from api.settings import Settings

    modal_s = triton_modal.serving_options(group)["timeout"]
    api_s = max(r.timeout_s for r in routes_of(group))
    settings = Settings()
    assert modal_s > api_s and modal_s > settings.body_timeout_s and modal_s > settings.header_timeout_s
