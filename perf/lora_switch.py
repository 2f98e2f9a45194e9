"""How long switching a request's LoRA set costs in the GPU serving path, against the alternatives, in one run.

FLUX.1-dev's transformer at full size (the real config, random weights: the benchmark machine cannot download),
BF16 on one GPU, 1024x1024 (4096 image tokens, 512 text tokens). Rows of the CSV (`measure`):

- switch_in_place: InPlaceLoras.apply (components/lora_apply.py) on the module as the GPU profile serves it (fused
  QKV, FP8 linears), for random rank-r LoRAs adapting every attention projection of all 19 + 38 blocks
  (components/lora_weights.sample_lora): `cold` is a set's first switch (the file read into factors on the weightless
  skeleton, moved to the GPU, written), `warm` a switch between two sets both in the LRU, `to_base` back to no LoRA.
- rebuild_merged: the naive alternative on the plain module, what an SGLang-style set_lora costs: diffusers'
  unfuse_lora + unload_lora + load_lora_adapter (+ set_adapters) + fuse_lora, from set A to set B.
- side_path_step_ms: one transformer forward with the LoRA unmerged (PEFT layers, load_lora_adapter + set_adapters)
  against the same module with no PEFT layers (what a merged module costs), eager and (where it fits the time)
  compiled; `extra` rows give the difference, per step and per 28-step image.
- served_step_ms: the served module's eager forward with the base weights and with a LoRA merged in place (no step
  pays for the LoRA); with --graphs also compiled with CUDA graphs, where the switch must reach the captured graph.
- bitwise_check: after A -> B -> A the module's tensors equal those after the first A, bit for bit, and after the
  switch to base those of the module before any LoRA.
- onnx_session_switch (CPU only, when the tiny ONNX export exists): model_repository/onnx_loras.OnnxLoras, a new
  ONNX Runtime session of the exported model with the set's weights merged in, against creating the base session.

`--device cpu --tiny` runs the same on the tiny FLUX.1-dev checkpoint in float32 (the test, and the CPU profile's
row). Writes perf/results/<device>/lora_switch_<device>.csv and .png and prints a table.

    python -m perf.lora_switch                          # the GPU: perf/results/h200/lora_switch_h200.{csv,png}
    python -m perf.lora_switch --device cpu --tiny      # perf/results/cpu/lora_switch_cpu.{csv,png}
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from perf.report import cuda_ms, log

PIPELINE = "FluxPipeline"  # whose lora_state_dict reads FLUX LoRA files (registry Family.pipeline_class)
STEPS = 28  # /flux-dev's steps per image
REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_ONNX = REPO_ROOT / ".cache" / "test-stack" / "onnx" / "flux_dev_transformer" / "model.onnx"
NAN = float("nan")


@dataclass
class SwitchRow:
    device: str
    setting: str  # the module the row measured: dtype, speed-ups
    measure: str  # switch_in_place, rebuild_merged, side_path_step_ms, served_step_ms, bitwise_check, ...
    phase: str  # cold / warm / to_base, eager_merged / eager_peft / eager_extra, ...
    rank: int  # LoRA rank (0: none)
    median_ms: float
    repeats: int
    per_image_ms: float = NAN  # side path: the extra ms over a 28-step image
    passed: str = ""  # bitwise_check: "True" / "False"
    detail: str = ""


@dataclass
class Run:
    """What every phase needs: where it runs, and the rows so far (written out after each phase)."""

    device: torch.device
    label: str  # "h200", "cpu": the results folder and file name
    dtype: torch.dtype
    tiny: bool
    module_dir: Path  # a folder with the transformer's config.json (LoraReader builds its skeleton from it)
    loras: dict[int, tuple[Path, Path]]  # rank -> (LoRA A, LoRA B)
    inputs: dict
    args: argparse.Namespace
    t0: float
    rows: list[SwitchRow]
    forwards: bool = True  # whether the served module runs forwards here (FP8 GEMMs need CUDA)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def add(self, **kwargs: object) -> None:
        row = SwitchRow(device=self.label, **kwargs)  # type: ignore[arg-type]
        self.rows.append(row)
        ms = f"{row.median_ms:.2f} ms" if row.median_ms == row.median_ms else "-"
        log(f"{row.measure}/{row.phase} rank {row.rank}: {ms} {row.passed} {row.detail}".rstrip())

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def fits(self, phase: str, seconds: float) -> bool:
        """Whether an optional phase of about `seconds` still fits the run's time budget."""
        if self.elapsed() + seconds <= self.args.budget_s:
            return True
        log(f"skipping {phase}: {self.elapsed():.0f}s elapsed + ~{seconds:.0f}s > budget {self.args.budget_s:.0f}s")
        return False


# ---------------------------------------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000 if samples else NAN


def forward_ms(run: Run, module: torch.nn.Module, warmups: int = 1, graphs: bool = False) -> float:
    """Median ms of one transformer forward (CUDA events on the GPU), after `warmups` calls (compilation)."""

    def step() -> object:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode():
            return module(**run.inputs)

    for _ in range(warmups - 1):
        step()
    if run.cuda:
        return cuda_ms(step, run.args.steps)
    step()
    return median_ms([seconds(step, run.device) for _ in range(run.args.steps)])


def output(run: Run, module: torch.nn.Module, graphs: bool = False) -> torch.Tensor:
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with torch.inference_mode():
        return module(**run.inputs)[0].detach().clone()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the module (parameters and buffers: FP8 weights and scales too), copied."""
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def bitwise_equal(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> tuple[bool, list[str]]:
    """Whether the module's tensors are bit for bit `expected` (compared as bytes: FP8 and NaN too); the names that
    differ."""
    now = module.state_dict()
    differ = [
        name
        for name, want in expected.items()
        if name not in now
        or now[name].shape != want.shape
        or now[name].dtype != want.dtype
        or not torch.equal(
            now[name].detach().contiguous().reshape(-1).view(torch.uint8),
            want.contiguous().reshape(-1).view(torch.uint8),
        )
    ]
    return not differ and set(now) == set(expected), differ


def restore(module: torch.nn.Module, base: dict[str, torch.Tensor]) -> None:
    """Put the base copies back into the plain module's linears (after diffusers' fuse/unfuse rounding)."""
    with torch.no_grad():
        for name, value in base.items():
            module.get_parameter(name).copy_(value)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def lora_set(path: Path, key: str, scale: float = 1.0):  # noqa: ANN201 - a LoraSet
    from components.lora_set import LoraFile, LoraSet

    return LoraSet((LoraFile(path=str(path), key=key, scale=scale, label=path.stem),))


# ---------------------------------------------------------------------------------------------------------- module


def build_module(run_device: torch.device, tiny_dir: Path | None, dtype: torch.dtype) -> torch.nn.Module:
    """The FLUX.1-dev transformer: the tiny checkpoint's, or the full-size architecture with random seeded weights
    built straight on the device (the same weights every call)."""
    from diffusers import FluxTransformer2DModel

    if tiny_dir is not None:
        module = FluxTransformer2DModel.from_pretrained(tiny_dir, torch_dtype=dtype).to(run_device)
    else:
        from families.flux.benchmark import FLUX_TRANSFORMER

        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(run_device):
                torch.manual_seed(1)
                module = FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=True)
        finally:
            torch.set_default_dtype(previous)
    return module.eval().requires_grad_(False)


def transformer_inputs(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, args: argparse.Namespace):  # noqa: ANN201
    from diffusers import FluxPipeline

    config = module.config
    h, w = args.height // 16, args.width // 16
    g = torch.Generator(device).manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, h * w, config.in_channels, device=device, dtype=dtype, generator=g),
        encoder_hidden_states=torch.randn(
            1, args.text_tokens, config.joint_attention_dim, device=device, dtype=dtype, generator=g
        ),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, device=device, dtype=dtype, generator=g),
        timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, h, w, device, dtype),
        txt_ids=torch.zeros(args.text_tokens, 3, device=device, dtype=dtype),
        guidance=torch.full((1,), 3.5, device=device, dtype=torch.float32),
        return_dict=False,
    )


def load_peft(module: torch.nn.Module, path: Path, adapter: str) -> None:
    """What diffusers' load_lora_weights does for the transformer: read and convert, inject PEFT layers, activate."""
    from components.lora_weights import lora_pipeline_class

    loaded = lora_pipeline_class(PIPELINE).lora_state_dict(str(path), return_lora_metadata=True)
    module.load_lora_adapter(loaded[0], prefix="transformer", adapter_name=adapter, metadata=loaded[-1])
    module.set_adapters([adapter], [1.0])


def peft_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


# ---------------------------------------------------------------------------------------------------------- phases


def compiled(module: torch.nn.Module, how: str) -> None:
    """Compile `module` in place: "full" its forward (as the served module), "regional" each repeated block on its
    own (diffusers' compile_repeated_blocks: one compiled code for all 19 double and all 38 single blocks, a fraction
    of the compile time); "eager" nothing. `uncompiled` undoes it."""
    if how == "full":
        module.forward = torch.compile(module.forward, fullgraph=False, dynamic=False)
    elif how == "regional":
        names = set(module._repeated_blocks)
        for block in module.modules():
            if type(block).__name__ in names:
                block.forward = torch.compile(block.forward, dynamic=False)


def uncompiled(module: torch.nn.Module) -> None:
    for m in module.modules():
        m.__dict__.pop("forward", None)
    torch._dynamo.reset()


def side_path(run: Run, module: torch.nn.Module, setting: str, ranks: list[int], how: str, warmups: int) -> None:
    """Forward ms with the LoRA unmerged (PEFT layers) against none (`module` plain, without PEFT layers), eager or
    compiled (`how`: eager, regional, full)."""
    phase = "eager" if how == "eager" else "compiled"
    t0 = time.perf_counter()
    compiled(module, how)
    merged = forward_ms(run, module, warmups)
    run.add(
        setting=setting,
        measure="side_path_step_ms",
        phase=f"{phase}_merged",
        rank=0,
        median_ms=merged,
        repeats=run.args.steps,
        detail="no PEFT layers: the cost of a merged module"
        + (f"; ready in {time.perf_counter() - t0:.0f}s incl. compile" if how != "eager" else ""),
    )
    uncompiled(module)
    for rank in ranks:
        t0 = time.perf_counter()
        load_peft(module, run.loras[rank][0], "A")
        layers = peft_layers(module)
        lora_dtype = layers[0].lora_A["A"].weight.dtype
        compiled(module, how)  # a new module structure: a new compilation
        try:
            unmerged = forward_ms(run, module, warmups)
        finally:
            uncompiled(module)
            module.unload_lora()
        ready = f"; ready in {time.perf_counter() - t0:.0f}s incl. load + compile" if how != "eager" else ""
        run.add(
            setting=setting,
            measure="side_path_step_ms",
            phase=f"{phase}_peft",
            rank=rank,
            median_ms=unmerged,
            repeats=run.args.steps,
            detail=f"{len(layers)} PEFT LoRA linears, factors in {str(lora_dtype).removeprefix('torch.')}{ready}",
        )
        extra = unmerged - merged
        run.add(
            setting=setting,
            measure="side_path_step_ms",
            phase=f"{phase}_extra",
            rank=rank,
            median_ms=extra,
            repeats=run.args.steps,
            per_image_ms=extra * STEPS,
            detail=f"peft - merged, x{STEPS} steps",
        )


def rebuild_merged(run: Run, module: torch.nn.Module, setting: str, reader, base: dict) -> None:  # noqa: ANN001
    """diffusers' way of switching a merged LoRA: unfuse + unload the old, load + fuse the new."""
    from components.lora_weights import merged

    for rank in run.args.ranks:
        paths = run.loras[rank]
        load_peft(module, paths[0], "A")
        module.fuse_lora(adapter_names=["A"])
        module.unfuse_lora()  # one untimed switch: lazy imports, allocator
        module.unload_lora()
        load_peft(module, paths[0], "A")
        module.fuse_lora(adapter_names=["A"])
        current = 0
        unload_s, load_s, fuse_s, total_s = [], [], [], []
        for _ in range(run.args.repeats):
            nxt = 1 - current
            name = "AB"[nxt]
            a = seconds(lambda: (module.unfuse_lora(), module.unload_lora()), run.device)
            b = seconds(lambda: load_peft(module, paths[nxt], name), run.device)  # noqa: B023
            c = seconds(lambda: module.fuse_lora(adapter_names=[name]), run.device)  # noqa: B023
            unload_s.append(a)
            load_s.append(b)
            fuse_s.append(c)
            total_s.append(a + b + c)
            current = nxt
        # Did it merge the right set? One adapted weight against base + delta of the set now fused.
        updates = reader.updates(lora_set(paths[current], f"check:{rank}:{current}"))
        name = sorted(updates)[0]
        layer = module.get_submodule(name.rsplit(".", 1)[0])
        got = layer.base_layer.weight.float()
        want = dict(merged({name: base[name]}, {name: updates[name]}))[name].float()
        rel = float((got - want).norm() / (want - base[name].float()).norm())
        detail = (
            f"unfuse+unload {median_ms(unload_s):.1f} ms, load+set_adapters {median_ms(load_s):.1f} ms, "
            f"fuse {median_ms(fuse_s):.1f} ms; fused weight vs base+delta: rel. error {rel:.3g} of the delta"
        )
        run.add(
            setting=setting,
            measure="rebuild_merged",
            phase="A_to_B",
            rank=rank,
            median_ms=median_ms(total_s),
            repeats=len(total_s),
            detail=detail,
        )
        module.unfuse_lora()
        module.unload_lora()
        restore(module, base)


def in_place(run: Run, module: torch.nn.Module, setting: str, loras, ranks: list[int], graphs: bool = False) -> None:  # noqa: ANN001
    """InPlaceLoras.apply: cold and warm switches, back to base, and the bitwise check, per rank."""
    original = snapshot(module)
    tag = "graphs_" if graphs else ""
    for rank in ranks:
        a_path, b_path = run.loras[rank]
        # cold: every set new to the reader and to the applier's LRU (a new key), so each switch reads its file
        cold = []
        for i in range(run.args.cold_repeats):
            path = (a_path, b_path)[i % 2]
            cold.append(loras.apply(lora_set(path, f"cold:{tag}{rank}:{i}")))
        loras.apply(None)
        a, b = lora_set(a_path, f"A:{tag}{rank}"), lora_set(b_path, f"B:{tag}{rank}")
        cold.append(loras.apply(a))
        after_a = snapshot(module)
        out_a = output(run, module, graphs) if run.forwards else None
        cold.append(loras.apply(b))
        warm = [loras.apply(a)]
        same_a, differ_a = bitwise_equal(module, after_a)
        same_out = None if out_a is None else bool(torch.equal(output(run, module, graphs), out_a))
        to_base = [loras.apply(None)]
        same_base, differ_base = bitwise_equal(module, original)
        for _ in range(run.args.repeats):
            warm.append(loras.apply(b))
            warm.append(loras.apply(a))
            to_base.append(loras.apply(None))
            warm.append(loras.apply(a))  # base -> a set in the LRU
            loras.apply(None)
        n_written = len(loras.reader.updates(a))
        run.add(
            setting=setting,
            measure="switch_in_place",
            phase=f"{tag}cold",
            rank=rank,
            median_ms=median_ms(cold),
            repeats=len(cold),
            detail="first switch to a set: file read + factors to device + write",
        )
        run.add(
            setting=setting,
            measure="switch_in_place",
            phase=f"{tag}warm",
            rank=rank,
            median_ms=median_ms(warm),
            repeats=len(warm),
            detail=f"set in the LRU: base + delta of {n_written} weights written",
        )
        run.add(
            setting=setting,
            measure="switch_in_place",
            phase=f"{tag}to_base",
            rank=rank,
            median_ms=median_ms(to_base),
            repeats=len(to_base),
            detail="base copies written back",
        )
        detail = f"A->B->A == A: {same_a}; A->B->A->base == original: {same_base}"
        if same_out is not None:
            detail += f"; forward output after A->B->A == after A: {same_out}"
        if differ_a or differ_base:
            detail += f"; differ: {(differ_a + differ_base)[:4]}"
        run.add(
            setting=setting,
            measure="bitwise_check",
            phase=f"{tag}ABA_base",
            rank=rank,
            median_ms=NAN,
            repeats=1,
            passed=str(same_a and same_base and same_out is not False),
            detail=detail,
        )
        del after_a
    del original


def served_steps(run: Run, module: torch.nn.Module, setting: str, loras, graphs: bool) -> None:  # noqa: ANN001
    """The served module's step at base and with a LoRA merged in place: the same ms; the output moves."""
    rank = run.args.ranks[0]
    warmups = 3 if graphs else 1
    phase = "graphs" if graphs else "eager"
    loras.apply(None)
    base_ms = forward_ms(run, module, warmups, graphs)
    base_out = output(run, module, graphs)
    switch_s = loras.apply(lora_set(run.loras[rank][0], f"served:{phase}"))
    lora_ms = forward_ms(run, module, 1, graphs)
    lora_out = output(run, module, graphs)
    moved = float((lora_out.float() - base_out.float()).abs().mean() / base_out.float().abs().mean())
    loras.apply(None)
    back = bool(torch.equal(output(run, module, graphs), base_out))
    run.add(
        setting=setting,
        measure="served_step_ms",
        phase=f"{phase}_base",
        rank=0,
        median_ms=base_ms,
        repeats=run.args.steps,
    )
    run.add(
        setting=setting,
        measure="served_step_ms",
        phase=f"{phase}_lora",
        rank=rank,
        median_ms=lora_ms,
        repeats=run.args.steps,
        passed=str(moved > 0 and back),
        detail=f"switched in {switch_s * 1000:.0f} ms (cold); output moved {moved:.3g} (mean rel.); "
        f"back to base == base output: {back}",
    )


def onnx_rows(run: Run, onnx_path: Path, module_dir: Path) -> None:
    """OnnxLoras (the CPU profile): a new ONNX Runtime session with the set merged in, vs the base session."""
    import onnxruntime as ort

    from model_repository.onnx_loras import OnnxLoras

    setting = f"onnxruntime {ort.__version__} cpu, tiny export"

    def make_session(model: str | bytes) -> ort.InferenceSession:  # as model_repository/component_model.py does
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("RYLA_ORT_THREADS", "0"))
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    onnx_loras = OnnxLoras(onnx_path, module_dir, PIPELINE, make_session)
    base = [seconds(lambda: make_session(str(onnx_path)), run.device) for _ in range(run.args.repeats)]
    run.add(
        setting=setting,
        measure="onnx_session_switch",
        phase="base_session",
        rank=0,
        median_ms=median_ms(base),
        repeats=len(base),
        detail=f"{onnx_path.stat().st_size / 2**20:.1f} MiB graph",
    )
    for rank in run.args.ranks:
        path = run.loras[rank][0]
        cold, new_scale, hit = [], [], []
        for i in range(run.args.cold_repeats):
            onnx_loras.session(lora_set(path, f"onnx:{rank}:{i}"))
            cold.append(onnx_loras.last.seconds)
            onnx_loras.session(lora_set(path, f"onnx:{rank}:{i}", scale=0.5))  # file read already: merge + session
            new_scale.append(onnx_loras.last.seconds)
            hit.append(seconds(lambda: onnx_loras.session(lora_set(path, f"onnx:{rank}:{i}")), run.device))  # noqa: B023
        changed = len(onnx_loras.last.changed)
        run.add(
            setting=setting,
            measure="onnx_session_switch",
            phase="cold",
            rank=rank,
            median_ms=median_ms(cold),
            repeats=len(cold),
            detail=f"file read + merge into the model + new session ({changed} initializers)",
        )
        run.add(
            setting=setting,
            measure="onnx_session_switch",
            phase="warm_read",
            rank=rank,
            median_ms=median_ms(new_scale),
            repeats=len(new_scale),
            detail="merge into the model + new session",
        )
        run.add(
            setting=setting,
            measure="onnx_session_switch",
            phase="lru_hit",
            rank=rank,
            median_ms=median_ms(hit),
            repeats=len(hit),
            detail="the set's session from the LRU",
        )


# ---------------------------------------------------------------------------------------------------------- outputs


def write_outputs(run: Run) -> Path:
    out = Path(run.args.out or REPO_ROOT / "perf" / "results" / run.label)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"lora_switch_{run.label}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(SwitchRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in run.rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"wrote {csv_path} (matplotlib missing: no plot)")
        return csv_path
    switch = [r for r in run.rows if r.measure in ("switch_in_place", "rebuild_merged", "onnx_session_switch")]
    steps = [r for r in run.rows if r.measure in ("side_path_step_ms", "served_step_ms")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    colors = {"switch_in_place": "tab:green", "rebuild_merged": "tab:red", "onnx_session_switch": "tab:purple"}
    if switch:
        axes[0].barh(
            [f"{r.measure} {r.phase} r{r.rank}" for r in switch],
            [max(r.median_ms, 1e-3) for r in switch],
            color=[colors[r.measure] for r in switch],
        )
        axes[0].set_xscale("log")
        axes[0].invert_yaxis()
    axes[0].set_xlabel("ms per LoRA-set switch (median, log scale)")
    if steps:
        axes[1].barh(
            [f"{r.measure.removesuffix('_step_ms')} {r.phase} r{r.rank}" for r in steps],
            [r.median_ms for r in steps],
            color=["tab:orange" if "extra" in r.phase else "tab:blue" for r in steps],
        )
        axes[1].invert_yaxis()
    axes[1].set_xlabel(f"ms per transformer step ({run.args.width}x{run.args.height})")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=7)
    checks = [r.passed for r in run.rows if r.measure == "bitwise_check"]
    model = "tiny FLUX.1-dev" if run.tiny else "FLUX.1-dev transformer"
    fig.suptitle(f"LoRA-set switch, {model} on {run.label}; bitwise A->B->A check: {', '.join(checks) or '-'}")
    fig.tight_layout()
    png = csv_path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    log(f"wrote {csv_path} and {png}")
    return csv_path


def print_table(rows: list[SwitchRow]) -> None:
    head = ("measure", "phase", "rank", "median ms", "per image ms", "n", "passed", "setting")
    body = [
        (
            r.measure,
            r.phase,
            str(r.rank),
            "-" if r.median_ms != r.median_ms else f"{r.median_ms:.2f}",
            "-" if r.per_image_ms != r.per_image_ms else f"{r.per_image_ms:.1f}",
            str(r.repeats),
            r.passed,
            r.setting,
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    for line in (head, tuple("-" * w for w in widths), *body):
        print(" | ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)), flush=True)


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny FLUX.1-dev checkpoint (float32 on the CPU)")
    parser.add_argument("--root", type=Path, default=None, help="tiny checkpoints root (default: .cache/checkpoints)")
    parser.add_argument("--ranks", default="16,64", help="LoRA ranks, comma-separated")
    parser.add_argument("--width", type=int, default=None, help="default 1024 (tiny: 256)")
    parser.add_argument("--height", type=int, default=None, help="default 1024 (tiny: 256)")
    parser.add_argument("--text-tokens", type=int, default=None, help="default 512 (tiny: 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed forwards per step row (default 5; CPU: 25)")
    parser.add_argument("--repeats", type=int, default=5, help="timed switches per warm / rebuild row")
    parser.add_argument("--cold-repeats", type=int, default=3, help="first switches to new sets per cold row")
    parser.add_argument("--no-fp8", action="store_true", help="in-place rows on the fused-QKV BF16 module")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also the compiled side path (default: on CUDA)",
    )
    parser.add_argument(
        "--compile-mode",
        choices=("regional", "full"),
        default="regional",
        help="the compiled side path: each repeated block compiled (fast to compile) or the whole forward",
    )
    parser.add_argument(
        "--graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also the served module compiled with CUDA graphs (default: on CUDA)",
    )
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip optional phases that would run past this")
    parser.add_argument("--onnx", type=Path, default=TINY_ONNX, help="tiny ONNX export (CPU row; skipped if absent)")
    parser.add_argument("--out", type=Path, default=None, help="default perf/results/<device>")
    parser.add_argument("--work", type=Path, default=None, help="LoRA files and config (default: a temp folder)")
    args = parser.parse_args(argv)
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.width = args.width or (256 if args.tiny else 1024)
    args.height = args.height or (256 if args.tiny else 1024)
    args.text_tokens = args.text_tokens or (64 if args.tiny else 512)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (5 if cuda else 25)  # the CPU's tiny steps take ms and share the cores: more of them
    # Explicitly on the CPU too (compiled, no CUDA graphs there): how the test drives those phases' code.
    args.compile = cuda if args.compile is None else args.compile
    args.graphs = cuda if args.graphs is None else args.graphs
    if cuda:
        name = torch.cuda.get_device_name()
        label = "h200" if "H200" in name else name.replace("NVIDIA ", "").replace(" ", "_").lower()
    else:
        label = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        bench(args, device, label, work)
    return 0


def bench(args: argparse.Namespace, device: torch.device, label: str, work: Path) -> None:
    from components.lora_apply import InPlaceLoras, base_copies
    from components.lora_weights import LoraReader, sample_lora
    from families.flux import FP8_LAYERS
    from model_repository.accelerate import Acceleration, accelerate

    t0 = time.perf_counter()
    cuda = device.type == "cuda"
    dtype = torch.float32 if args.tiny and not cuda else torch.bfloat16
    tiny_dir = None
    if args.tiny:
        from checkpoints.source import resolve
        from checkpoints.tiny import DEFAULT_ROOT

        tiny_dir = resolve("flux-dev", "tiny", args.root or DEFAULT_ROOT).path / "transformer"
        log(f"tiny FLUX.1-dev transformer from {tiny_dir}")
    log(f"building the FLUX.1-dev transformer ({'tiny' if args.tiny else 'full size, random weights'}) on {device}")
    module = build_module(device, tiny_dir, dtype)
    n_params = sum(p.numel() for p in module.parameters())
    log(f"{n_params / 1e6:.1f}M parameters in {dtype}, built in {time.perf_counter() - t0:.1f}s")
    module_dir = work / "transformer"
    module.save_config(module_dir)  # config.json: the skeleton LoraReader and sample_lora build
    loras = {}
    for rank in args.ranks:
        loras[rank] = tuple(
            sample_lora(module_dir, work / f"lora_{name}_r{rank}.safetensors", rank=rank, seed=seed)
            for name, seed in (("A", 2 * rank), ("B", 2 * rank + 1))
        )
        size = loras[rank][0].stat().st_size / 2**20
        log(f"rank {rank}: LoRAs A and B written ({size:.1f} MiB each)")
    inputs = transformer_inputs(module, device, dtype, args)
    run = Run(device, label, dtype, args.tiny, module_dir, loras, inputs, args, t0, [])
    plain = f"{str(dtype).removeprefix('torch.')} {device.type}, plain diffusers module"
    log(f"{args.width}x{args.height}: {inputs['hidden_states'].shape[1]} image + {args.text_tokens} text tokens")

    # 1. the plain module: the unmerged side path (eager) and diffusers' rebuild of a merged LoRA
    base = base_copies(module)
    reader = LoraReader(module_dir, PIPELINE)
    side_path(run, module, plain + " eager", args.ranks, "eager", warmups=3)
    write_outputs(run)
    rebuild_merged(run, module, plain, reader, base)
    write_outputs(run)

    # 2. the served module: fused QKV (+ FP8), InPlaceLoras from base copies taken before the speed-ups
    fp8 = not args.no_fp8
    how = Acceleration(fuse_qkv=True, fp8_layers=FP8_LAYERS if fp8 else None, compile=False)
    accelerate(module, how, log=log)
    setting = f"{str(dtype).removeprefix('torch.')} {device.type}, fuse_qkv" + ("+fp8" if fp8 else "")
    run.forwards = cuda or not fp8
    if not run.forwards:
        setting += " (no forward: FP8 GEMMs need CUDA)"
    in_place_loras = InPlaceLoras(reader, base)
    in_place_loras.bind(module)
    in_place(run, module, setting, in_place_loras, args.ranks)
    if run.forwards:
        served_steps(run, module, setting + " eager", in_place_loras, graphs=False)
    write_outputs(run)

    if not cuda and args.onnx is not None:
        if args.onnx.is_file():
            try:
                onnx_rows(run, args.onnx, module_dir)
            except Exception as exc:  # a stale or foreign export: say so, keep the other rows
                log(f"onnx_session_switch skipped: {type(exc).__name__}: {exc}")
        else:
            log(f"onnx_session_switch skipped: no tiny ONNX export at {args.onnx}")
        write_outputs(run)

    # 3. optional, compiled (the long part): the side path compiled, then the served module with CUDA graphs
    plain_module = False  # the module in hand is the served (accelerated) one
    if args.compile and run.fits("the compiled side path", 120 if args.compile_mode == "regional" else 240):
        del in_place_loras, module, base
        free(device)
        module = build_module(device, tiny_dir, dtype)
        plain_module = True
        label = f"torch.compile ({args.compile_mode}{': repeated blocks' if args.compile_mode == 'regional' else ''})"
        try:
            side_path(run, module, f"{plain} {label}", args.ranks[:1], args.compile_mode, warmups=1)
        except Exception as exc:
            log(f"compiled side path failed: {type(exc).__name__}: {exc}")
            uncompiled(module)
            if peft_layers(module):
                module.unload_lora()
        write_outputs(run)
    if args.graphs and run.forwards and run.fits("the served module with CUDA graphs", 200):
        if not plain_module:
            del in_place_loras, module, base
            free(device)
            module = build_module(device, tiny_dir, dtype)
        base = base_copies(module)
        in_place_loras = InPlaceLoras(reader, base)
        how = Acceleration(fuse_qkv=True, fp8_layers=FP8_LAYERS if fp8 else None, compile=True, cuda_graphs=cuda)
        accelerate(module, how, log=log)
        in_place_loras.bind(module)
        graphs_setting = setting + " torch.compile" + (" cuda_graphs" if cuda else "")
        try:
            served_steps(run, module, graphs_setting, in_place_loras, graphs=True)
            in_place(run, module, graphs_setting, in_place_loras, args.ranks[:1], graphs=True)
        except Exception as exc:
            log(f"served module with CUDA graphs failed: {type(exc).__name__}: {exc}")
        write_outputs(run)
    log(f"done in {run.elapsed():.0f}s")
    print_table(run.rows)


if __name__ == "__main__":
    raise SystemExit(main())
