# # Triton + the RYLA API on Modal H100s, one container per app group
#
# This file puts the stack on Modal. For every app group of the registry (`registry.GROUPS`) that has routes it
# defines:
#
# - a **build function**, `build_<group>`, that downloads the group's pinned checkpoints onto a Volume, exports and
#   builds TensorRT engines where the GPU profile asks for them, lays out the GPU-profile Triton model repository on
#   a second Volume and commits it;
# - a **serving class**, `<Group>Server`, one H100 container that starts `tritonserver` over that repository with
#   only the group's models loaded, warms every route up, and serves `api/` (the product's REST contract) as an
#   ASGI web endpoint.
#
# The serving classes and build functions are written out at the end of this file, one of each per app group: Modal
# finds them by their global names. Everything they serve (routes, checkpoints, models, resources) comes from the
# registry, so a new route of an existing group needs nothing here; a new app group needs its two entries (a test
# fails until it has them).
#
# ```sh
# modal run triton_modal.py::build_flux          # once per checkpoint or engine change (GPU, long)
# modal deploy triton_modal.py                   # every serving class, as web endpoints
# RYLA_API_KEY=... modal run triton_modal.py --group flux   # smoke test against the deployed endpoint
# ```
#
# Before the first build:
#
# ```sh
# modal secret create ryla-hf-token HF_TOKEN=hf_...            # gated repos need an accepted licence
# modal secret create ryla-api-keys RYLA_API_KEYS=key1,key2    # the product's API keys; deploy refuses without
# ```
#
# Checkpoints are pinned by commit. An entry whose `revision` is still "main" is refused by the build (it would let
# the served weights change without a rebuild). To pin one, look its commit up and write it into the registry:
#
# ```sh
# python -c "from huggingface_hub import HfApi; print(HfApi().model_info('<hub id>').sha)"
# ```
#
# (`modal run triton_modal.py::build_flux --allow-unpinned` builds a one-off from "main"; the repository then records
# the commit that was actually downloaded.)

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import modal

from registry import (
    CHECKPOINTS,
    FAMILIES,
    GROUPS,
    TENSORRT_VERSION,
    AppGroup,
    family_of,
    pipeline_model_of,
    routes_of,
)
from stack.repository_watch import RepositoryWatcher  # the standard library only, as triton_server
from stack.supervise import Supervisor  # the standard library only too
from stack.triton_server import TritonInstall, TritonServer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.settings import Settings

# Taken as early as this module runs in a container: the fallback start of the cold-start clock.
_IMPORTED_AT = time.time()

# ## Pinned constants

APP_NAME = "ryla-diffusion"

# NGC's Triton release 25.10: Ubuntu 24.04 with Python 3.12, CUDA 13.0.2, TensorRT 10.13.3 (the build checks the
# version, see TENSORRT_PACKAGE), and tritonserver with the python, TensorRT and ONNX Runtime backends in
# /opt/tritonserver. CUDA 13 matches the torch wheel below (both need an R580+ driver). The python-backend stub in
# this image embeds the image's own Python, so our packages are installed into that interpreter (no `add_python`):
# the stub and the API then import the same torch, diffusers and numpy.
TRITON_TAG = "25.10"
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_TAG}-py3"
PYTHON_VERSION = "3.12"
TRITON_HOME = PurePosixPath("/opt/tritonserver")
TRITON_LOG = Path("/tmp/tritonserver.log")  # printed when Triton fails to start or to warm up

# The project's dependencies for the GPU image: pyproject.toml's pins (tests/test_triton_modal.py keeps them in step)
# with two differences. torch==2.13.0 from PyPI is, on Linux x86_64, the CUDA 13 build (it pulls nvidia-*-cu13
# wheels); pyproject's pin resolves to the CPU wheel only on our machines, from a local CPU index. And two packages
# stay out: `modal`, which Modal mounts into every container itself, and `nvidia-pytriton`, whose bundled tritonserver
# 2.51 the local stack runs; here the image's own tritonserver serves.
GPU_PYTHON_PACKAGES: tuple[str, ...] = (
    "torch==2.13.0",
    # Triton's python backend stub, tritonclient 2.51 and the API's tensors are checked with numpy < 2 (design.md).
    "numpy==1.26.4",
    "diffusers==0.42.1",
    "transformers==5.24.0",
    "accelerate>=1.0",
    "peft==0.21.2",
    "safetensors>=0.4",
    "sentencepiece>=0.2",
    "tokenizers>=0.20",
    "protobuf>=4.25,<5",
    "onnx==1.22.0",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    "tritonclient[all]==2.51.0",
    "fastapi>=0.115",
    "uvicorn[standard]>=0.30",
    "pydantic>=2.7",
    "pydantic-settings>=2.3",
    "prometheus-client>=0.20",
    "pillow>=10",
    "isal>=1.6",
    "opencv-python-headless>=4.10,<4.12",
    "av>=14",
    "ftfy>=6",
    "httpx>=0.27",
    "fastapi-offline==1.7.7",
)
# The TensorRT Python API the engine builder uses must be the TensorRT that Triton's tensorrt backend runs: a plan
# loads only in the version that built it. The build function checks the two agree before it builds anything.
TENSORRT_PACKAGE = f"tensorrt-cu13=={TENSORRT_VERSION}"  # the registry's pin, which also names the plans
NVIDIA_PYPI = "https://pypi.nvidia.com"  # where the tensorrt-cu13 wheels' libraries come from
# Our packages, mounted into /root at container start (Python sources only); the Triton models import them too.
OUR_PACKAGES = (
    "registry",
    "families",
    "artifacts",
    "checkpoints",
    "components",
    "loras",
    "export",
    "model_repository",
    "api",
    "stack",
)

# Volumes: checkpoints (the hub cache), engines (ONNX, TensorRT plans, model repositories), compile caches.
CHECKPOINTS_VOLUME_NAME = "ryla-checkpoints"
ENGINES_VOLUME_NAME = "ryla-engines"
COMPILE_CACHE_VOLUME_NAME = "ryla-compile-cache"
# The LoRA store of lora_id / lora_name (api.md): the product's character LoRAs, put there by the product; builds add
# the sample LoRA of each LoRA route's checkpoint (stack/build.py), which warm-ups and smoke tests load.
LORAS_VOLUME_NAME = "ryla-loras"
# Build and serving containers mount each Volume at the same path: the repository's configs name checkpoint folders
# by absolute path.
CHECKPOINTS_DIR = PurePosixPath("/vol/checkpoints")
ENGINES_DIR = PurePosixPath("/vol/engines")
COMPILE_CACHE_DIR = PurePosixPath("/vol/compile-cache")
LORAS_DIR = PurePosixPath("/vol/loras")

# Secrets: their names and the keys the server checks they hold when the app deploys.
HF_SECRET_NAME, HF_SECRET_KEY = "ryla-hf-token", "HF_TOKEN"
API_KEYS_SECRET_NAME, API_KEYS_SECRET_KEY = "ryla-api-keys", "RYLA_API_KEYS"

# Build containers: the TensorRT builder needs the GPU it builds for; exporting a 12-20B transformer holds its FP32
# weights and the traced graph in host memory.
BUILD_GPU = "H100"
BUILD_TIMEOUT_S = 6 * 3600
BUILD_CPU = 16.0
BUILD_MEMORY_MIB = 128 * 1024
# Serving containers: the python-backend stubs read each component's BF16 weights into host memory before moving
# them to the GPU, several at once (the largest group: two 41 GB transformers and a 16 GB text encoder, FP8 on the GPU).
SERVE_CPU = 8.0
SERVE_MEMORY_MIB = 128 * 1024
# Requests beyond the group's generation slots and queue: /health, /ready and /metrics must not wait behind them.
SERVICE_HEADROOM = 4
# Seconds an input may run beyond its route's generation limit (encoding, the API's own work).
REQUEST_MARGIN_S = 60
# Modal's web endpoints answer a request still running after 150 s with a 303 redirect to its result, which the
# product's client follows: a synchronous request takes its route's own limit (video: up to 600 s). Jobs
# (`Prefer: respond-async`) live in one Modal Dict per group, so any container of the group reads or cancels them.
JOB_STORE = "modal-dict:ryla-jobs-{group}"
# Seconds between a serving container's looks at the Volumes for a newer build of its group (a running container
# loads it without a restart; new containers mount the latest commit anyway).
REPOSITORY_POLL_S = 60.0
# Warm-up generations: the route's default size (compile caches and CUDA graphs are per shape, and most requests use
# it) with a few steps. The smoke test uses the route's smallest size.
WARMUP_STEPS = 2
SMOKE_STEPS = 2

# ## The image

triton_image = (
    modal.Image.from_registry(
        TRITON_IMAGE,
        setup_dockerfile_commands=[
            # Modal runs the image's interpreter, which it looks for as `python` with pip.
            "RUN ln -sf /usr/bin/python3 /usr/bin/python",
            f'RUN python --version | grep -q "Python {PYTHON_VERSION}\\."',
            "RUN python -m pip --version || (apt-get update && apt-get install -y --no-install-recommends python3-pip)",
            # Ubuntu 24.04 marks the system Python as externally managed (PEP 668); this image is ours alone.
            "ENV PIP_BREAK_SYSTEM_PACKAGES=1",
        ],
    )
    # NGC's entrypoint only prints a banner (and sets up CUDA forward compatibility, which an R580+ host needs not).
    .entrypoint([])
    .pip_install(*GPU_PYTHON_PACKAGES)
    .pip_install(TENSORRT_PACKAGE, extra_index_url=NVIDIA_PYPI)
    .env(
        {
            # The python-backend stubs are processes of their own: PYTHONPATH lets them import our packages.
            "PYTHONPATH": "/root",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            # torch.compile (the transformers) and CUDA JIT caches on a Volume: later containers reuse them.
            "TORCHINDUCTOR_CACHE_DIR": f"{COMPILE_CACHE_DIR}/inductor",
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
            "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
            "TRITON_CACHE_DIR": f"{COMPILE_CACHE_DIR}/triton-kernels",  # OpenAI Triton's kernels, not the server
            "CUDA_CACHE_PATH": f"{COMPILE_CACHE_DIR}/nv",
            "RYLA_LORA_STORE": str(LORAS_DIR),  # api/settings.py; fetched LoRA URLs cache in the container's /tmp
        }
    )
    .add_local_python_source(*OUR_PACKAGES)
)

app = modal.App(APP_NAME, image=triton_image)

# ## Volumes and Secrets

checkpoints_volume = modal.Volume.from_name(CHECKPOINTS_VOLUME_NAME, create_if_missing=True)
engines_volume = modal.Volume.from_name(ENGINES_VOLUME_NAME, create_if_missing=True)
compile_cache_volume = modal.Volume.from_name(COMPILE_CACHE_VOLUME_NAME, create_if_missing=True)
loras_volume = modal.Volume.from_name(LORAS_VOLUME_NAME, create_if_missing=True)

# `required_keys`: `modal deploy` fails unless the Secret exists and holds the key (checked by Modal's server).
hf_secret = modal.Secret.from_name(HF_SECRET_NAME, required_keys=[HF_SECRET_KEY])
api_keys_secret = modal.Secret.from_name(API_KEYS_SECRET_NAME, required_keys=[API_KEYS_SECRET_KEY])

BUILD_VOLUMES: dict[str | PurePosixPath, modal.Volume] = {
    CHECKPOINTS_DIR: checkpoints_volume,
    ENGINES_DIR: engines_volume,
    LORAS_DIR: loras_volume,
}
# Serving reads weights, engines and LoRAs and never writes them; only the compile caches grow.
READ_ONLY_WHEN_SERVING = (CHECKPOINTS_DIR, ENGINES_DIR, LORAS_DIR)
SERVE_VOLUMES: dict[str | PurePosixPath, modal.Volume] = {
    path: volume.read_only() if path in READ_ONLY_WHEN_SERVING else volume
    for path, volume in {**BUILD_VOLUMES, COMPILE_CACHE_DIR: compile_cache_volume}.items()
}

# ## What a group serves, from the registry


def _unique(items: Any) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class GroupPlan:
    """Everything one app group needs, derived from the registry alone."""

    group: str
    checkpoints: tuple[str, ...]  # the registry checkpoints its routes serve
    families: tuple[str, ...]
    loras: tuple[str, ...]  # registry LoRAs merged at build time into components of those checkpoints
    components: tuple[str, ...]  # Triton component models of those checkpoints
    pipelines: tuple[str, ...]  # Triton pipeline models its routes call

    @property
    def models(self) -> tuple[str, ...]:
        """What Triton loads: the pipelines and every component they call by BLS (explicit model control)."""
        return (*self.components, *self.pipelines)


def group_plan(group: str) -> GroupPlan:
    routes = routes_of(group)
    checkpoints = _unique(r.checkpoint for r in routes)
    families = _unique(family_of(c).name for c in checkpoints)
    # The components build_repository lays out for these checkpoints: those sharing a checkpoint with them.
    components = [c for f in families for c in FAMILIES[f].components if any(k in checkpoints for k in c.checkpoints)]
    return GroupPlan(
        group=group,
        checkpoints=checkpoints,
        families=families,
        loras=_unique(c.merged_lora for c in components if c.merged_lora),
        components=_unique(c.triton_model for c in components),
        pipelines=_unique(pipeline_model_of(r.path) for r in routes),
    )


def served_groups() -> list[AppGroup]:
    """The app groups that get a container: those with at least one route in the registry."""
    return [g for g in GROUPS.values() if routes_of(g.name)]


def _words(group: str) -> list[str]:
    return [w for w in re.split(r"[^0-9A-Za-z]+", group) if w]


def serving_class_name(group: str) -> str:
    """`qwen-edit` -> `QwenEditServer`: the class's global name, which Modal's container imports it by."""
    return "".join(w[:1].upper() + w[1:] for w in _words(group)) + "Server"


def build_function_name(group: str) -> str:
    return "build_" + "_".join(w.lower() for w in _words(group))


def web_label(group: str) -> str:
    """The endpoint's subdomain label: `<workspace>--ryla-<group>.modal.run`."""
    return "ryla-" + "-".join(w.lower() for w in _words(group))


@dataclass(frozen=True)
class GroupDirs:
    """A group's folders on the engines Volume. Each group has its own, so rebuilding one never touches what another
    serves."""

    group: str

    @property
    def root(self) -> Path:
        return Path(ENGINES_DIR) / self.group

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def record(self) -> Path:
        return self.root / "build.json"


def _log(group: str, message: str) -> None:
    print(f"[modal:{group}] {message}", flush=True)


# ## Building a group: checkpoints -> ONNX -> TensorRT plans -> model repository


def require_pinned(plan: GroupPlan) -> None:
    """Refuse before any download if a checkpoint or LoRA of the group floats on a branch (checkpoints/source.py's
    rule, RYLA_ALLOW_UNPINNED=1 included), naming every one at once."""
    from checkpoints.source import UnpinnedRevisionError, check_pinned
    from registry import LORAS

    problems = []
    for entry in (*(CHECKPOINTS[k] for k in plan.checkpoints), *(LORAS[k] for k in plan.loras)):
        try:
            check_pinned(entry)
        except UnpinnedRevisionError as e:
            problems.append(str(e))
    if problems:
        raise UnpinnedRevisionError(
            f"{plan.group}: refusing to build from floating revisions:\n  "
            + "\n  ".join(problems)
            + "\nPin each to its commit (HfApi().model_info(hub_id).sha) in families/<folder>/__init__.py, "
            "or build a one-off with --allow-unpinned."
        )


def _tensorrt_versions() -> tuple[str, str]:
    """(the `tensorrt` Python package's version, the libnvinfer version Triton's TensorRT backend links)."""
    import subprocess

    import tensorrt

    backend = Path(TRITON_HOME) / "backends" / "tensorrt" / "libtriton_tensorrt.so"
    linked = subprocess.run(["ldd", str(backend)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"libnvinfer\.so\.\S*\s+=>\s+(\S+)", linked)
    if match is None:
        raise RuntimeError(f"{backend} links no libnvinfer:\n{linked}")
    return tensorrt.__version__, Path(match.group(1)).resolve().name.removeprefix("libnvinfer.so.")


def require_matching_tensorrt() -> None:
    builder, runtime = _tensorrt_versions()
    if not builder.startswith(runtime) and not runtime.startswith(builder):
        raise RuntimeError(
            f"the engine builder's TensorRT {builder} differs from Triton's {runtime}: its plans would not load. "
            f"Pin TENSORRT_PACKAGE in triton_modal.py to the TensorRT of {TRITON_IMAGE}."
        )


def build_group(group: str, force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """The body of every `build_<group>` function; runs in a GPU container with both Volumes mounted read-write."""
    from checkpoints.source import ALLOW_UNPINNED_ENV

    # checkpoints/source.py reads its escape hatch from the environment: set it for this build only.
    before = os.environ.get(ALLOW_UNPINNED_ENV)
    if allow_unpinned:
        os.environ[ALLOW_UNPINNED_ENV] = "1"
    try:
        return _build_group(group, force)
    finally:
        if before is None:
            os.environ.pop(ALLOW_UNPINNED_ENV, None)
        else:
            os.environ[ALLOW_UNPINNED_ENV] = before


def _commit_checkpoints() -> None:
    checkpoints_volume.commit()
    loras_volume.commit()  # the sample LoRAs of the group's LoRA routes


def _build_group(group: str, force: bool) -> dict[str, Any]:
    # The build sequence every stack runs (stack/build.py); imported here: torch and export/ live in containers only.
    from stack.build import BuildDirs, build

    plan = group_plan(group)
    dirs = GroupDirs(group)
    require_pinned(plan)
    _log(group, f"building {', '.join(plan.checkpoints)} (+ LoRAs: {', '.join(plan.loras) or 'none'})")
    done = build(
        BuildDirs.under(dirs.root, checkpoints=Path(CHECKPOINTS_DIR), loras=Path(LORAS_DIR)),
        checkpoints=plan.checkpoints,
        mode="hub",
        profile="gpu",
        force=force,
        after_checkpoints=_commit_checkpoints,  # tens of GB: keep them even if a later step fails
        before_engines=require_matching_tensorrt,
        after_engines=engines_volume.commit,
    )
    record = {
        "group": group,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoints": {k: r.label for k, r in done.resolved.items()},
        "loras": {k: str(f) for k, f in done.loras.items()},
        "models": done.models,
        "engines": done.engines,
        "seconds": round(done.seconds, 1),
    }
    # Written last: serving containers load a new build only once this record changed (stack/repository_watch.py).
    dirs.record.write_text(json.dumps(record, indent=2, default=str))
    engines_volume.commit()
    _log(group, f"model repository {dirs.repository}: {', '.join(done.models)} ({record['seconds']}s in all)")
    return record


# ## Serving a group: Triton in the container, warmed up, the API as an ASGI endpoint


@dataclass(frozen=True)
class NgcTriton(TritonInstall):
    """The image's own tritonserver, its backends (python, TensorRT, ONNX Runtime) already where it looks for them.

    Unlike the pytriton wheel the local stack runs, nothing needs copying, and the image's LD_LIBRARY_PATH already
    names Triton's and CUDA's libraries; its python-backend stub embeds the image's Python, which is ours."""

    @classmethod
    def in_image(cls, home: Path = Path(TRITON_HOME)) -> NgcTriton:
        python = home / "backends" / "python"
        return cls(
            binary=home / "bin" / "tritonserver",
            libs=home / "lib",
            backend_src=python,
            stub=python / "triton_python_backend_stub",
        )

    def lay_out_backends(self, backends_dir: Path) -> Path:
        return backends_dir

    def env(self, backends_dir: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # As for the local stack: the interpreter whose packages the stubs import comes first on PATH. The image's
        # stub links the image's libpython already: LD_LIBRARY_PATH stays the image's, so no system folder shadows
        # the CUDA libraries torch bundles (stack/triton_server.py says what that costs).
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env


def triton_server(group: str) -> TritonServer:
    """`tritonserver --model-repository=<the group's> --model-control-mode=explicit --strict-readiness=true`, loading
    the group's models only (stack/triton_server.py adds the ports, loopback addresses and --load-model flags)."""
    return TritonServer(
        repository=GroupDirs(group).repository,
        backends_dir=Path(TRITON_HOME) / "backends",
        log_path=TRITON_LOG,
        load_models=group_plan(group).models,
        install=NgcTriton.in_image(),
        dies_with_parent=False,
    )


def reload_served_volumes() -> None:
    """A serving container's view of a newer build: its engines, and the checkpoints a new revision brought (the
    repository's configs name checkpoint folders). Raises while a file on a Volume is open; the watcher retries."""
    checkpoints_volume.reload()
    engines_volume.reload()


def require_api_keys(settings: Settings) -> None:
    """A serving container never answers without keys: an empty RYLA_API_KEYS would turn auth off (api/auth.py)."""
    if not settings.api_keys:
        raise RuntimeError(
            f"refusing to serve without API keys: the Modal Secret {API_KEYS_SECRET_NAME!r} must set "
            f"{API_KEYS_SECRET_KEY}=key1,key2"
        )


def process_started_at() -> float:
    """When this process started (wall clock), from /proc; the import of this module where /proc cannot say."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted from the state (field 3)
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime")
        started = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT
    # A clock that says the process started in the future or days ago is not to be trusted.
    return started if _IMPORTED_AT - 86400 < started <= time.time() else _IMPORTED_AT


@dataclass(frozen=True)
class WarmUp:
    path: str
    status: int
    seconds: float
    done_at: float  # wall clock


async def warm_up(group: str, app_: FastAPI, api_key: str | None = None) -> list[WarmUp]:
    """One generation per route through the API in this process (no network): validation, Triton, the pipelines,
    encoding. Raises on the first route that fails."""
    import httpx

    from api.samples import sample_body

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results = []
    transport = httpx.ASGITransport(app=app_)
    # The app's lifespan opens its Triton client on this event loop and closes it after (ASGITransport runs none).
    async with (
        app_.router.lifespan_context(app_),
        httpx.AsyncClient(transport=transport, base_url="http://w") as client,
    ):
        for route in routes_of(group):
            t0 = time.perf_counter()
            body = sample_body(route, steps=WARMUP_STEPS)
            r = await client.post(route.path, json=body, headers=headers, timeout=None)
            results.append(WarmUp(route.path, r.status_code, time.perf_counter() - t0, time.time()))
            if r.status_code != 200:
                raise RuntimeError(f"warm-up of {route.path} answered {r.status_code}: {r.text[:1000]}")
    return results


class GroupServer:
    """The lifecycle every serving class shares; each group's subclass below sets `group` and its web endpoint."""

    group: ClassVar[str]

    @modal.enter(snap=True)
    def import_cpu_side(self) -> None:
        """Memory snapshot: the API's imports (FastAPI, pydantic, tritonclient/gRPC, numpy, Pillow), CPU-only.

        Sound because nothing here touches the GPU (there is none while a snapshot is taken), opens a socket, starts a
        process or reads a Secret. Triton, its python-backend stubs and their CUDA contexts are separate processes
        started after the restore; the Settings are read after it too, so rotated API keys take effect."""
        import httpx  # noqa: F401
        import PIL.Image  # noqa: F401

        import api.app  # noqa: F401
        import api.settings  # noqa: F401

        # A restored container gets a new task id (modal's runtime updates the environment on restore).
        self._task_at_snapshot = os.environ.get("MODAL_TASK_ID")

    @modal.enter()
    def start(self) -> None:
        """Start Triton with this group's models, wait for it, warm every route up, measure the cold start."""
        from api.app import create_app
        from api.settings import Settings

        task = os.environ.get("MODAL_TASK_ID")
        restored = task != getattr(self, "_task_at_snapshot", task)
        # The clock starts at the process's start, or at the restore: a restored process started elsewhere, earlier.
        t0 = time.time() if restored else process_started_at()
        group, plan, dirs = self.group, group_plan(self.group), GroupDirs(self.group)
        spec = GROUPS[group]
        triton = triton_server(group)
        settings = Settings(
            groups=(group,), triton_grpc_url=triton.grpc_url, gpu_type=spec.gpu, job_store=JOB_STORE.format(group=group)
        )
        require_api_keys(settings)
        if not dirs.repository.is_dir():
            raise RuntimeError(
                f"no model repository at {dirs.repository}: run `modal run triton_modal.py::"
                f"{build_function_name(group)}` first"
            )
        if dirs.record.is_file():
            _log(group, f"serving the build of {json.loads(dirs.record.read_text()).get('built_at')}")
        # Every weight is on the Volume: a hub call from a pipeline would be a bug, not a download.
        os.environ["HF_HUB_OFFLINE"] = "1"

        self.triton = triton.start()
        try:
            self.triton.wait_ready(timeout_s=spec.startup_timeout_s, models=plan.models)
        except Exception:
            self._print_triton_log()
            raise
        triton_ready_s = time.time() - t0
        _log(group, f"Triton ready with {', '.join(plan.models)}: {triton_ready_s:.1f}s after container start")
        # A Triton that dies is started again in this container with the same command (ports, repository, the group's
        # models) and waited for, as `make serve` does; the API answers 503 with Retry-After meanwhile.
        self.supervisor = Supervisor(
            "tritonserver", self.triton, ready=lambda: triton.is_ready(plan.models), log=lambda m: _log(group, m)
        ).watch()
        # What Triton loaded is what the Volume held at start; a later build's record tells the watcher to load more.
        self.watcher = RepositoryWatcher(self.triton, plan.models, refresh=reload_served_volumes, marker=dirs.record)

        # The warm-up runs through an API of its own, without keys (it never leaves this process) and with the
        # startup budget as its time limit: the first generation may compile. The served app is made fresh below,
        # so the first client's answer is the one marked `x-cold-start: true`.
        warm_settings = Settings(
            groups=(group,),
            triton_grpc_url=settings.triton_grpc_url,
            gpu_type=spec.gpu,
            api_keys=(),
            generation_timeout_s=float(spec.startup_timeout_s),
        )
        warm_app = create_app(warm_settings)

        # A loop of its own, not asyncio.run: that would also unset the thread's event loop, which is Modal's.
        loop = asyncio.new_event_loop()
        try:
            results = loop.run_until_complete(warm_up(group, warm_app))
        except Exception:
            self._print_triton_log()
            raise
        finally:
            loop.close()
        first_image_s = results[0].done_at - t0
        for w in results:
            _log(group, f"warm-up {w.path}: {w.status} in {w.seconds:.1f}s")
        _log(group, f"first image {first_image_s:.1f}s after container start (restored from a snapshot: {restored})")

        self.web_app = create_app(settings)
        state = self.web_app.state.api
        # The API's clock starts with the container: /health's uptime, and `ryla_cold_start_seconds` runs from here to
        # the first client's answer (the one marked cold), which on a scale from zero waited for all of the above.
        state.started = t0
        state.record_cold_start_phase("triton_ready", triton_ready_s)
        state.record_cold_start_phase("first_image", first_image_s)
        compile_cache_volume.commit()  # what the warm-up compiled, for the next container
        _, self._stop_watching = self.watcher.start(REPOSITORY_POLL_S)

    def _print_triton_log(self, lines: int = 200) -> None:
        if TRITON_LOG.is_file():
            print("".join(TRITON_LOG.read_text(errors="replace").splitlines(keepends=True)[-lines:]), file=sys.stderr)

    @modal.exit()
    def stop(self) -> None:
        stop_watching = getattr(self, "_stop_watching", None)
        if stop_watching is not None:
            stop_watching.set()
        # The supervisor first, so no restart races the stop; it stops Triton from its own thread, whose exit would
        # SIGKILL a Triton it restarted (stack/supervise.py, dies_with_parent).
        supervisor = getattr(self, "supervisor", None)
        if supervisor is not None:
            supervisor.stop()
        triton = getattr(self, "triton", None)
        if triton is not None:
            triton.stop()


# ## Resources of a group's containers, from the registry


def _request_timeout_s(group: str) -> int:
    return int(max(r.timeout_s for r in routes_of(group))) + REQUEST_MARGIN_S


def serving_options(group: str) -> dict[str, Any]:
    """`app.cls` options of a group's serving class: its GPU, scale-down and start-up budget from the registry, a
    request limit of its slowest route plus margin, the Volumes read-only, the API keys, memory snapshots."""
    spec = GROUPS[group]
    return {
        "gpu": spec.gpu,
        "cpu": SERVE_CPU,
        "memory": SERVE_MEMORY_MIB,
        "volumes": SERVE_VOLUMES,
        "secrets": [api_keys_secret],
        "scaledown_window": spec.scaledown_window_s,
        "startup_timeout": spec.startup_timeout_s,
        "timeout": _request_timeout_s(group),
        "enable_memory_snapshot": True,
    }


def concurrency(group: str) -> dict[str, int]:
    """`modal.concurrent` options: the API's gate admits max_concurrency generations and queues max_queue (429
    beyond), plus room for /health and /metrics; the autoscaler adds a container once the generation slots are busy."""
    spec = GROUPS[group]
    return {
        "max_inputs": spec.max_concurrency + spec.max_queue + SERVICE_HEADROOM,
        "target_inputs": spec.max_concurrency,
    }


BUILD_OPTIONS: dict[str, Any] = {
    "gpu": BUILD_GPU,
    "cpu": BUILD_CPU,
    "memory": BUILD_MEMORY_MIB,
    "volumes": BUILD_VOLUMES,
    "secrets": [hf_secret],
    "timeout": BUILD_TIMEOUT_S,
}


# ## One serving class and one build function per app group
#
# Written out, because Modal's container imports each by its global name. A test fails when a registry group with
# routes has none (or when one is left over here).


@app.cls(**serving_options("flux"))
@modal.concurrent(**concurrency("flux"))
class FluxServer(GroupServer):
    """Triton + the API for the flux group's routes."""

    group = "flux"

    @modal.asgi_app(label=web_label("flux"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_flux(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the flux group."""
    return build_group("flux", force=force, allow_unpinned=allow_unpinned)


@app.cls(**serving_options("qwen-image"))
@modal.concurrent(**concurrency("qwen-image"))
class QwenImageServer(GroupServer):
    """Triton + the API for the qwen-image group's routes."""

    group = "qwen-image"

    @modal.asgi_app(label=web_label("qwen-image"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_qwen_image(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the qwen-image group."""
    return build_group("qwen-image", force=force, allow_unpinned=allow_unpinned)


@app.cls(**serving_options("qwen-edit"))
@modal.concurrent(**concurrency("qwen-edit"))
class QwenEditServer(GroupServer):
    """Triton + the API for the qwen-edit group's routes."""

    group = "qwen-edit"

    @modal.asgi_app(label=web_label("qwen-edit"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_qwen_edit(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the qwen-edit group."""
    return build_group("qwen-edit", force=force, allow_unpinned=allow_unpinned)


@app.cls(**serving_options("z-image"))
@modal.concurrent(**concurrency("z-image"))
class ZImageServer(GroupServer):
    """Triton + the API for the z-image group's routes."""

    group = "z-image"

    @modal.asgi_app(label=web_label("z-image"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_z_image(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the z-image group."""
    return build_group("z-image", force=force, allow_unpinned=allow_unpinned)


@app.cls(**serving_options("lora"))
@modal.concurrent(**concurrency("lora"))
class LoraServer(GroupServer):
    """Triton + the API for the lora group's routes."""

    group = "lora"

    @modal.asgi_app(label=web_label("lora"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_lora(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the lora group."""
    return build_group("lora", force=force, allow_unpinned=allow_unpinned)


@app.cls(**serving_options("wan"))
@modal.concurrent(**concurrency("wan"))
class WanServer(GroupServer):
    """Triton + the API for the wan group's routes (video: minutes per clip, the route limit 600 s)."""

    group = "wan"

    @modal.asgi_app(label=web_label("wan"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_wan(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the wan group."""
    return build_group("wan", force=force, allow_unpinned=allow_unpinned)


@app.cls(**serving_options("wan-r2v"))
@modal.concurrent(**concurrency("wan-r2v"))
class WanR2vServer(GroupServer):
    """Triton + the API for the wan-r2v group's route (VACE: reference videos to a new clip)."""

    group = "wan-r2v"

    @modal.asgi_app(label=web_label("wan-r2v"))
    def web(self) -> FastAPI:
        return self.web_app


@app.function(**BUILD_OPTIONS)
def build_wan_r2v(force: bool = False, allow_unpinned: bool = False) -> dict[str, Any]:
    """Download, export, build engines and lay out the model repository of the wan-r2v group."""
    return build_group("wan-r2v", force=force, allow_unpinned=allow_unpinned)


# Group -> its serving class and build function, as the smoke test and the tests look them up.
SERVING_CLASSES: dict[str, modal.Cls] = {
    "flux": FluxServer,
    "qwen-image": QwenImageServer,
    "qwen-edit": QwenEditServer,
    "z-image": ZImageServer,
    "lora": LoraServer,
    "wan": WanServer,
    "wan-r2v": WanR2vServer,
}
BUILD_FUNCTIONS: dict[str, modal.Function] = {
    "flux": build_flux,
    "qwen-image": build_qwen_image,
    "qwen-edit": build_qwen_edit,
    "z-image": build_z_image,
    "lora": build_lora,
    "wan": build_wan,
    "wan-r2v": build_wan_r2v,
}

# ## Smoke test against the deployed endpoint
#
# `modal run triton_modal.py --group qwen-image` calls every route of the group once, small and with few steps, and
# prints what the product's client reads. The first call may wait for a cold start.


@app.local_entrypoint()
def smoke(group: str = next(iter(GROUPS)), size: int = 0, steps: int = SMOKE_STEPS, url: str = "") -> None:
    import httpx

    from api.samples import sample_body

    if group not in SERVING_CLASSES:
        raise SystemExit(f"no serving class for group {group!r}; served groups: {sorted(SERVING_CLASSES)}")
    key = os.environ.get("RYLA_API_KEY") or next(iter(os.environ.get("RYLA_API_KEYS", "").split(",")), "")
    if not key.strip():
        raise SystemExit("set RYLA_API_KEY to one of the deployed API keys")
    base = url or modal.Cls.from_name(APP_NAME, serving_class_name(group))().web.get_web_url()
    print(f"{group}: {base}")
    headers = {"Authorization": f"Bearer {key.strip()}"}
    budget = GROUPS[group].startup_timeout_s + _request_timeout_s(group)
    failed = []
    # Web endpoints answer a long request with a redirect to poll: follow it.
    with httpx.Client(base_url=base, timeout=budget, follow_redirects=True) as client:
        t0 = time.perf_counter()
        health = client.get("/health")
        print(f"GET /health: {health.status_code} in {time.perf_counter() - t0:.1f}s")
        for route in routes_of(group):
            body = sample_body(route, steps=steps, size=size or route.limits.min_size)
            t0 = time.perf_counter()
            r = client.post(route.path, json=body, headers=headers)
            h = r.headers
            print(
                f"POST {route.path}: {r.status_code} {h.get('content-type')} {len(r.content)} B in "
                f"{time.perf_counter() - t0:.1f}s | x-cost-usd {h.get('x-cost-usd')} "
                f"x-execution-time-sec {h.get('x-execution-time-sec')} x-cold-start {h.get('x-cold-start')}"
            )
            if r.status_code != 200:
                print(f"  {r.text[:500]}")
                failed.append(route.path)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")
