"""What every GPU benchmark shares: one result row per variant, CUDA-event timing, FLOP counting, and the CSV and
plot each run writes (perf/results/<device>/). The benchmarks themselves live with their families
(families/<folder>/benchmark.py); their arithmetic (MFU, cost, PSNR) is perf/metrics.py."""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    device: str
    model: str
    variant: str
    width: int
    height: int
    steps: int
    step_ms: float
    end_to_end_s: float
    peak_memory_gb: float
    mfu: float
    cost_usd: float
    psnr_vs_eager_db: float
    compile_s: float
    ready_s: float = float("nan")  # served: tritonserver start -> models loaded
    first_image_s: float = float("nan")  # served: tritonserver start -> first image (cold start, no compile cache)
    warm_ready_s: float = float("nan")  # served, restarted with compile caches on disk: start -> models loaded
    warm_first_image_s: float = float("nan")  # ... -> first image


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def cuda_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `fn` by CUDA events, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def transformer_flops(pipe, inputs: dict) -> float:  # noqa: ANN001
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.transformer(**inputs)
    return float(counter.get_total_flops())


def write_outputs(rows: list[Row], out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    device = rows[0].device.replace(" ", "_")
    csv_path = out / f"{name}_{device}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    log(f"wrote {csv_path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r.model}\n{r.variant}" for r in rows]
    axes[0].bar(labels, [r.step_ms for r in rows], color="tab:blue")
    axes[0].set_ylabel(f"ms per transformer step ({rows[0].width}x{rows[0].height})")
    axes[1].bar(labels, [r.end_to_end_s for r in rows], color="tab:orange")
    axes[1].set_ylabel("end-to-end seconds")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{name} on {rows[0].device}: diffusers eager vs ours")
    fig.tight_layout()
    png = out / f"{name}_{device}.png"
    fig.savefig(png, dpi=120)
    log(f"wrote {png}")
