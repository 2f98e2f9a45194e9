"""triton_modal.py as Modal sees it before a deploy: the objects it registers, read from Modal's own specs, offline.

What a deploy or a container would do (build the image, create the Volumes and Secrets, start Triton on an H100) needs
Modal's servers and cannot run here; these tests pin down everything decided before that point."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import modal
import pytest
from modal._partial_function import _PartialFunctionFlags
from modal._utils.async_utils import synchronizer

import triton_modal
from registry import GROUPS, ROUTES, AppGroup, Task, catalog, pipeline_model_of, routes_of

REPO_ROOT = Path(__file__).resolve().parent.parent
GROUPS_WITH_ROUTES = sorted(g for g in GROUPS if routes_of(g))


def _app_objects(module: object = triton_modal) -> tuple[dict, dict]:
    """(classes, functions) registered on the module's App, by tag: Modal's own record of what it would deploy."""
    local = synchronizer._translate_in(module.app)._local_state
    return dict(local.classes), dict(local.functions)


def _service_function(cls: modal.Cls) -> modal.Function:
    """The Function behind a Cls: it carries the container's resources, Volumes, Secrets and autoscaler settings."""
    return synchronizer._translate_out(synchronizer._translate_in(cls)._class_service_function)


def _loader_setting(obj: modal.Function | modal.Secret, name: str) -> object:
    """A setting Modal keeps only for the create request it sends at deploy (Function.info() does not show it)."""
    return inspect.getclosurevars(synchronizer._translate_in(obj)._load).nonlocals[name]


def _mounts(info: modal.types.FunctionInfo) -> dict[str, tuple[str, bool]]:
    return {path: (v.name, v.read_only) for path, v in info.volumes.items()}


@pytest.fixture
def clean_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo a test's registry changes, then reload triton_modal, so later tests see the real registry's objects."""
    yield
    monkeypatch.undo()
    importlib.reload(triton_modal)


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


def test_one_serving_class_per_group_with_routes() -> None:
    classes, functions = _app_objects()
    assert GROUPS_WITH_ROUTES == ["flux", "qwen-edit", "qwen-image"]
    expected = {triton_modal.serving_class_name(g) for g in GROUPS_WITH_ROUTES}
    assert set(classes) == expected == {"FluxServer", "QwenImageServer", "QwenEditServer"}
    assert set(triton_modal.SERVING_CLASSES) == set(GROUPS_WITH_ROUTES)
    for group, cls in triton_modal.SERVING_CLASSES.items():
        # Modal's container finds the class by its global name in this module.
        assert getattr(triton_modal, triton_modal.serving_class_name(group)) is cls
        assert classes[triton_modal.serving_class_name(group)] is synchronizer._translate_in(cls)
    # Each class is a service function of the App; the rest are the build functions.
    assert {t for t in functions if t.endswith(".*")} == {f"{name}.*" for name in expected}


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_serving_class_resources_come_from_the_registry(group: str) -> None:
    spec = GROUPS[group]
    function = _service_function(triton_modal.SERVING_CLASSES[group])
    info = function.info()
    assert info.gpus == [("H100", 1)] and spec.gpu == "H100"
    assert info.startup_timeout == spec.startup_timeout_s
    assert _loader_setting(function, "autoscaler_settings").scaledown_window == spec.scaledown_window_s
    # A request may run as long as the slowest route of the group allows, plus the API's own work.
    assert info.timeout == max(r.timeout_s for r in routes_of(group)) + triton_modal.REQUEST_MARGIN_S
    # The API's gate holds max_concurrency generations and max_queue waiting; the autoscaler targets the former.
    assert info.concurrency_info.target_inputs == spec.max_concurrency
    assert info.concurrency_info.max_inputs == spec.max_concurrency + spec.max_queue + triton_modal.SERVICE_HEADROOM
    assert _loader_setting(function, "enable_memory_snapshot") is True


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_serving_class_mounts_the_volumes_and_the_api_keys_secret(group: str) -> None:
    info = _service_function(triton_modal.SERVING_CLASSES[group]).info()
    assert _mounts(info) == {
        "/vol/checkpoints": ("ryla-checkpoints", True),  # weights and engines are read, never written, when serving
        "/vol/engines": ("ryla-engines", True),
        "/vol/compile-cache": ("ryla-compile-cache", False),
    }
    # Only the API keys: serving reads every weight from the Volume and needs no hub token.
    assert info.secrets == ["modal.Secret.from_name('ryla-api-keys')"]


@pytest.mark.parametrize("group", GROUPS_WITH_ROUTES)
def test_serving_class_lifecycle_and_web_endpoint(group: str) -> None:
    cls = synchronizer._translate_in(triton_modal.SERVING_CLASSES[group])
    partials = cls._get_partial_functions()
    flags = {name: pf.flags for name, pf in partials.items()}
    assert flags["import_cpu_side"] & _PartialFunctionFlags.ENTER_PRE_SNAPSHOT
    assert flags["start"] & _PartialFunctionFlags.ENTER_POST_SNAPSHOT
    assert flags["stop"] & _PartialFunctionFlags.EXIT
    webhook = partials["web"].params.webhook_config
    assert flags["web"] & _PartialFunctionFlags.WEB_INTERFACE and webhook.requested_suffix == f"ryla-{group}"
    assert cls._get_user_cls().group == group


def test_one_build_function_per_group() -> None:
    _, functions = _app_objects()
    names = {triton_modal.build_function_name(g) for g in GROUPS_WITH_ROUTES}
    assert names == {"build_flux", "build_qwen_image", "build_qwen_edit"}
    assert {t for t in functions if not t.endswith(".*")} == names
    for group, function in triton_modal.BUILD_FUNCTIONS.items():
        assert getattr(triton_modal, triton_modal.build_function_name(group)) is function
        info = function.info()
        assert info.gpus == [("H100", 1)] and info.timeout == triton_modal.BUILD_TIMEOUT_S
        assert _mounts(info) == {
            "/vol/checkpoints": ("ryla-checkpoints", False),
            "/vol/engines": ("ryla-engines", False),
        }
        assert info.secrets == ["modal.Secret.from_name('ryla-hf-token')"]
        # The container calls this module's global of that name: the body that builds the group.
        raw = synchronizer._translate_in(function)._raw_f
        assert raw.__qualname__ == triton_modal.build_function_name(group)


def test_secrets_must_hold_their_keys_at_deploy() -> None:
    # Modal's server refuses the deploy unless each Secret exists with its key (checked when it is resolved).
    for secret, key in ((triton_modal.api_keys_secret, "RYLA_API_KEYS"), (triton_modal.hf_secret, "HF_TOKEN")):
        assert _loader_setting(secret, "required_keys") == [key]


def test_a_new_group_and_route_in_the_registry_get_their_own_class(
    monkeypatch: pytest.MonkeyPatch, clean_module: None
) -> None:
    toy = AppGroup("toy-box", scaledown_window_s=42, startup_timeout_s=900, max_concurrency=2, max_queue=3)
    monkeypatch.setitem(catalog.GROUPS, toy.name, toy)
    flux = ROUTES["/flux"]
    monkeypatch.setitem(catalog.ROUTES, "/toy", dataclasses.replace(flux, path="/toy", group=toy.name, timeout_s=30))
    module = importlib.reload(triton_modal)

    classes, functions = _app_objects(module)
    assert "ToyBoxServer" in classes and "build_toy_box" in functions
    assert len(classes) == len(GROUPS_WITH_ROUTES) + 1
    function = _service_function(module.SERVING_CLASSES["toy-box"])
    assert _loader_setting(function, "autoscaler_settings").scaledown_window == 42
    assert function.info().startup_timeout == 900
    assert function.info().concurrency_info.target_inputs == 2
    # Only the models of FLUX-schnell, the one checkpoint its route serves.
    assert module.group_plan("toy-box").models == (
        "flux_text_encoder",
        "flux_text_encoder_2",
        "flux_schnell_transformer",
        "flux_vae_decoder",
        "flux_pipeline",
    )


def test_a_group_without_routes_gets_no_container(monkeypatch: pytest.MonkeyPatch, clean_module: None) -> None:
    monkeypatch.setitem(catalog.GROUPS, "later", AppGroup("later"))
    module = importlib.reload(triton_modal)
    assert "later" not in module.SERVING_CLASSES and "later" not in module.BUILD_FUNCTIONS


def test_groups_whose_names_collide_are_refused(monkeypatch: pytest.MonkeyPatch, clean_module: None) -> None:
    for name in ("toy-box", "toy_box"):
        monkeypatch.setitem(catalog.GROUPS, name, AppGroup(name))
        monkeypatch.setitem(
            catalog.ROUTES, f"/{name}", dataclasses.replace(ROUTES["/flux"], path=f"/{name}", group=name)
        )
    with pytest.raises(ValueError, match="both map to"):
        importlib.reload(triton_modal)


def test_serving_refuses_to_start_without_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.settings import Settings

    with pytest.raises(RuntimeError, match="refusing to serve without API keys"):
        triton_modal.require_api_keys(Settings(api_keys=()))
    triton_modal.require_api_keys(Settings(api_keys=("k1",)))
    # The container's enter checks the keys the Secret gave it before it starts anything.
    monkeypatch.delenv("RYLA_API_KEYS", raising=False)
    server = synchronizer._translate_in(triton_modal.SERVING_CLASSES["flux"])._get_user_cls()()
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


def test_qwen_image_merges_the_lightning_lora_at_build_time() -> None:
    assert triton_modal.group_plan("qwen-image").loras == ("qwen-image-lightning",)
    assert triton_modal.group_plan("flux").loras == ()


def test_the_build_refuses_floating_revisions_naming_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from checkpoints.source import ALLOW_UNPINNED_ENV, UnpinnedRevisionError

    monkeypatch.delenv(ALLOW_UNPINNED_ENV, raising=False)
    plan = triton_modal.group_plan("qwen-image")
    with pytest.raises(UnpinnedRevisionError) as e:
        triton_modal.require_pinned(plan)
    for key in (*plan.checkpoints, *plan.loras):
        assert key in str(e.value)
    assert "registry/catalog.py" in str(e.value)
    monkeypatch.setenv(ALLOW_UNPINNED_ENV, "1")
    triton_modal.require_pinned(plan)


class _OfflineVolume:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


def test_build_lays_out_the_gpu_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """build_flux's body with the tiny FLUX checkpoints standing in for the hub: refused while unpinned, then the GPU
    profile's repository and a build record on the engines Volume, both Volumes committed."""
    import checkpoints.source as source
    from checkpoints.source import ALLOW_UNPINNED_ENV, UnpinnedRevisionError

    tiny_root = REPO_ROOT / ".cache" / "test-checkpoints"
    resolve_tiny = source.resolve
    monkeypatch.setattr(source, "resolve", lambda key, mode, root: resolve_tiny(key, "tiny", tiny_root))
    volumes = {name: _OfflineVolume() for name in ("checkpoints_volume", "engines_volume")}
    for name, volume in volumes.items():
        monkeypatch.setattr(triton_modal, name, volume)
    monkeypatch.setattr(triton_modal, "ENGINES_DIR", tmp_path)
    monkeypatch.delenv(ALLOW_UNPINNED_ENV, raising=False)

    with pytest.raises(UnpinnedRevisionError, match="flux-schnell"):
        triton_modal.build_group("flux")
    record = triton_modal.build_group("flux", allow_unpinned=True)
    assert ALLOW_UNPINNED_ENV not in os.environ  # the escape hatch was for that build only
    plan = triton_modal.group_plan("flux")
    repository = tmp_path / "flux" / "model_repository"
    assert record["models"] == list(plan.models)
    assert sorted(p.name for p in repository.iterdir()) == sorted(plan.models)
    assert "KIND_GPU" in (repository / "flux_schnell_transformer" / "config.pbtxt").read_text()
    assert (tmp_path / "flux" / "build.json").is_file() and record["engines"] == {}  # torch on the GPU: no plans
    assert volumes["checkpoints_volume"].commits == 1 and volumes["engines_volume"].commits == 1


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_warm_up_and_smoke_bodies_are_valid_requests(path: str) -> None:
    from api.schemas import request_model

    route = ROUTES[path]
    model = request_model(route)
    warm = model.model_validate(triton_modal.sample_body(route, triton_modal.WARMUP_STEPS))
    smoke = model.model_validate(triton_modal.sample_body(route, triton_modal.SMOKE_STEPS, route.limits.min_size))
    assert warm.steps == smoke.steps == 2
    if route.task is Task.TEXT_TO_IMAGE:
        assert (warm.width, warm.height) == (route.width, route.height)
        assert (smoke.width, smoke.height) == (route.limits.min_size,) * 2


def test_gpu_dependencies_follow_pyproject() -> None:
    """The image installs pyproject's pins (torch resolves to its CUDA wheel there) minus what Modal or the NGC image
    provide: a pin bumped in pyproject.toml must be bumped in triton_modal.py too."""
    pinned = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    provided = {"modal", "nvidia-pytriton"}
    expected = [d for d in pinned if not any(d.startswith(p) for p in provided)]
    assert list(triton_modal.GPU_PYTHON_PACKAGES) == expected
    assert triton_modal.TENSORRT_PACKAGE.startswith("tensorrt-cu13==")  # CUDA 13, like the torch wheel and the image


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
    state = create_app(Settings(groups=("flux",))).state.api
    state.record_cold_start_phase("triton_ready", 81.5)
    state.record_cold_start_phase("first_image", 95.25)
    text = generate_latest(state.metrics.registry).decode()
    assert 'ryla_cold_start_phase_seconds{phase="triton_ready"} 81.5' in text
    assert 'ryla_cold_start_phase_seconds{phase="first_image"} 95.25' in text
    assert "ryla_cold_start_seconds 0.0" in text  # the API's own first-answer gauge is unchanged
