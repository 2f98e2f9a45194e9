"""The one build sequence: checkpoints -> exported components -> (TensorRT plans) -> a Triton model repository.

`make serve` (stack/serve.py), a model update on a running stack (stack/update.py) and the Modal build
(triton_modal.py) all run `build`; they differ only in where checkpoints come from (tiny, local folders, the hub),
the serving profile and what they do between the steps (a Volume commit on Modal). Each step rebuilds only what
changed: the tiny builders' stamps, export/'s manifest, the engine builder's manifest and the layout's file writes
decide.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from checkpoints.source import ResolvedCheckpoint, resolve, resolve_lora, with_merged
from export import EXPORTED, export_family
from export.family import STALE
from model_repository.layout import CheckpointSource, build_repository
from registry import CHECKPOINTS, FAMILIES, ROUTES, family_of, merged_loras_of
from registry.tasks import sample_lora_name

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildDirs:
    """Where a build reads and writes: checkpoints (or the hub cache), ONNX exports, TensorRT plans, the model
    repository, and the Triton backends folder of the local server."""

    checkpoints: Path
    onnx: Path
    plans: Path
    repository: Path
    backends: Path
    loras: Path  # the LoRA store (RYLA_LORA_STORE) the local stack serves lora_id / lora_name from

    @classmethod
    def under(cls, root: Path, checkpoints: Path | None = None, loras: Path | None = None) -> BuildDirs:
        root = Path(root)
        return cls(
            checkpoints=Path(checkpoints) if checkpoints is not None else root / "checkpoints",
            onnx=root / "onnx",
            plans=root / "plans",
            repository=root / "model_repository",
            backends=root / "backends",
            loras=Path(loras) if loras is not None else root / "loras",
        )


@dataclass
class Build:
    resolved: dict[str, ResolvedCheckpoint]  # checkpoint key -> its folder and label
    loras: dict[str, Path]  # registry LoRA key -> file, for the components that merge one
    exported: list[str] = field(default_factory=list)  # components export/ rebuilt
    engines: dict[str, Any] = field(default_factory=dict)  # family -> the engine builder's manifest (GPU builds)
    models: list[str] = field(default_factory=list)  # every Triton model laid out
    changed: set[str] = field(default_factory=set)  # models whose folder changed: a running Triton reloads these
    seconds: float = 0.0


@dataclass(frozen=True)
class ExportJob:
    """One family's exports: its graph components (FP32), and the BF16 graphs its TensorRT plans are built from."""

    family: str
    served: dict[str, Path]  # checkpoint key -> folder
    onnx: Path
    force: bool
    labels: dict[str, str]
    loras: dict[str, Path]
    profile: str
    plans: list[str]  # components built as TensorRT plans on this profile
    components: tuple[str, ...]  # the components it exports (those that run from a graph on this profile)

    def _runs(self, **kw: object) -> list[dict]:
        common = {"force": self.force, "labels": self.labels, "loras": self.loras, **kw}
        runs = [export_family(self.family, self.served, self.onnx, profile=self.profile, components=self.components,
                              **common)]  # fmt: skip
        plans = [p for p in self.plans if p in self.components]
        if plans:  # bf16 and fp8 plans are built from BF16 graphs (export/tensorrt_build.py GRAPH_DTYPES)
            runs.append(
                export_family(self.family, self.served, self.onnx, dtype="bfloat16", components=plans, **common)
            )
        return runs

    def stale(self) -> bool:
        """Whether anything of it would be exported (a check of hashes, in this process)."""
        return any(state == STALE for run in self._runs(dry_run=True) for state in run["last_run"].values())

    def __call__(self) -> list[str]:
        """The components this run exported (FP32 graphs)."""
        return sorted(name for name, state in self._runs()[0]["last_run"].items() if state == EXPORTED)


def _run_exports(jobs: list[ExportJob], workers: int) -> list[list[str]]:
    """The exports, in `workers` processes at once where there are several (an export is mostly one single-threaded
    trace; the manifest takes each component's record under a lock). With several workers each component is a job
    of its own, so one family's long exports (Wan's VAE graphs) do not hold the other processes idle."""
    if workers > 1:
        jobs = [replace(job, components=(name,)) for job in jobs for name in job.components]
        jobs = [job for job in jobs if job.stale()]  # processes only for the components with work to do
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    t0 = time.perf_counter()
    # spawn: a forked torch process can hang in its thread pools. A worker takes the next job when it is free.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        done = list(pool.map(ExportJob.__call__, jobs))
    _log(f"exports of {len(jobs)} components in {min(workers, len(jobs))} processes: {time.perf_counter() - t0:.1f}s")
    return done


def write_sample_loras(store: Path, resolved: Mapping[str, ResolvedCheckpoint]) -> list[Path]:
    """The random LoRA of each LoRA route's checkpoint (registry.tasks.sample_lora_name), written into the store
    where it is missing or older than its checkpoint: what sample requests and smoke tests of those routes load."""
    from components.lora_weights import sample_lora

    written = []
    for checkpoint in sorted({r.checkpoint for r in ROUTES.values() if r.lora and r.checkpoint in resolved}):
        component = next(c for c in family_of(checkpoint).components_for(checkpoint).values() if c.lora)
        module_dir = resolved[checkpoint].path / component.subfolder
        out = store / f"{sample_lora_name(checkpoint)}.safetensors"
        if not out.exists() or out.stat().st_mtime < (module_dir / "config.json").stat().st_mtime:
            written.append(sample_lora(module_dir, out))
    return written


def _log(message: str) -> None:
    print(f"[build] {message}", flush=True)


def _nothing() -> None:
    pass


def build(
    dirs: BuildDirs,
    *,
    checkpoints: Iterable[str] | None = None,
    mode: str = "tiny",
    paths: Mapping[str, Path] | None = None,
    profile: str = "cpu",
    force: bool = False,
    after_checkpoints: Callable[[], None] = _nothing,
    before_engines: Callable[[], None] = _nothing,
    after_engines: Callable[[], None] = _nothing,
    export_jobs: int | None = None,
) -> Build:
    """Build the model repository that serves `checkpoints` (registry keys; default every checkpoint).

    mode: where checkpoints come from ("tiny", "hub"); a key in `paths` is the local diffusers folder given there
    (mode "local": an updated checkpoint). profile "cpu" exports the components ONNX Runtime runs; "gpu" exports
    and builds TensorRT plans for the components the registry runs as TensorRT there (torch components load their
    checkpoint folder). The callbacks run between the steps (Modal commits its Volumes there; the TensorRT version
    check runs before any plan is built). export_jobs: how many families export at once, each in its own process
    (default: the cores, up to 4, for tiny checkpoints; otherwise one, as a full-size export takes tens of GB)."""
    t0 = time.perf_counter()
    paths = dict(paths or {})
    keys = list(checkpoints) if checkpoints is not None else list(CHECKPOINTS)
    families = list(dict.fromkeys(family_of(k).name for k in keys))
    resolved = {k: resolve(k, "local" if k in paths else mode, dirs.checkpoints, paths.get(k)) for k in keys}
    components = [c for f in families for c in FAMILIES[f].components if any(k in resolved for k in c.checkpoints)]
    merged = sorted({c.merged_lora for c in components if c.merged_lora})
    resolved_loras = {key: resolve_lora(key, mode, dirs.checkpoints) for key in merged}
    loras = {key: r.file for key, r in resolved_loras.items()}
    # A checkpoint whose components merge a LoRA is served (and labelled) as base + LoRA.
    resolved = {k: with_merged(r, [resolved_loras[m] for m in merged_loras_of(k)]) for k, r in resolved.items()}
    for key, r in resolved.items():
        _log(f"checkpoint {key}: {r.label}")
    _log(f"{len(resolved)} checkpoints and {len(loras)} LoRAs ready in {time.perf_counter() - t0:.1f}s")
    for path in write_sample_loras(dirs.loras, resolved):
        _log(f"sample LoRA {path}")
    after_checkpoints()

    out = Build(resolved, loras)
    jobs = export_jobs if export_jobs is not None else (min(os.cpu_count() or 1, 4) if mode == "tiny" else 1)
    work: dict[str, ExportJob] = {}
    for family in families:
        served = {k: r.path for k, r in resolved.items() if CHECKPOINTS[k].family == family}
        # The components serving these checkpoints that run from an exported graph on this profile.
        graphs = [
            c
            for c in FAMILIES[family].components
            if any(k in served for k in c.checkpoints) and c.backend(profile) in ("onnxruntime", "tensorrt")
        ]
        if not graphs:
            _log(f"{family}: every component runs in torch on the {profile} profile, nothing to export")
            continue
        plans = [c.triton_model for c in graphs if c.backend(profile) == "tensorrt"]
        labels = {k: resolved[k].label for k in served}
        names = tuple(c.triton_model for c in graphs)
        work[family] = ExportJob(family, served, dirs.onnx, force, labels, loras, profile, plans, names)
    for exported in _run_exports(list(work.values()), jobs):
        out.exported += exported
    for family, job in work.items():
        if not job.plans:
            continue
        before_engines()
        # Imported only here: TensorRT exists only where plans are built.
        from export.tensorrt_build import Fp8Inputs, build_family_engines

        t1 = time.perf_counter()
        # An "fp8" component's plan comes from a Q/DQ graph calibrated by running its pipeline from these folders.
        fp8 = Fp8Inputs(checkpoint_dirs=job.served, loras=loras)
        out.engines[family] = build_family_engines(family, dirs.onnx, dirs.plans, components=job.plans, fp8=fp8)
        after_engines()
        _log(f"{family}: plans for {', '.join(job.plans)} in {time.perf_counter() - t1:.0f}s")

    sources = {k: CheckpointSource(r.path, r.label) for k, r in resolved.items()}
    out.models = build_repository(
        dirs.repository,
        dirs.onnx,
        sources,
        profile=profile,
        families=families,
        loras=loras,
        changed=out.changed,
        plans_dir=dirs.plans,
    )
    out.seconds = time.perf_counter() - t0
    _log(f"model repository {dirs.repository}: {', '.join(out.models)} ({out.seconds:.1f}s in all)")
    return out
