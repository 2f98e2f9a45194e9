"""perf/lora_switch.py's tiny CPU mode: every row it measures is written, and the in-place switch gives back each
set's weights bit for bit (A -> B -> A, then base). No timing is asserted: the GPU numbers are in perf/results/."""

from __future__ import annotations

import csv
from pathlib import Path

from perf import lora_switch
from tests.fixtures import TEST_CHECKPOINTS


def test_tiny_cpu_run_writes_every_row_and_switches_bitwise(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--tiny", "--root", str(TEST_CHECKPOINTS), "--out", str(out), "--work", str(tmp_path)]
    argv += ["--ranks", "4,16", "--steps", "1", "--repeats", "2", "--cold-repeats", "1", "--no-compile", "--no-graphs"]
    assert lora_switch.main(argv) == 0

    with (out / "lora_switch_cpu.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["device"] for r in rows} == {"cpu"}
    found = {(r["measure"], r["phase"], r["rank"]) for r in rows}
    for rank in ("4", "16"):
        for phase in ("cold", "warm", "to_base"):
            assert ("switch_in_place", phase, rank) in found
        assert ("rebuild_merged", "A_to_B", rank) in found
        assert ("side_path_step_ms", "eager_peft", rank) in found
        assert ("side_path_step_ms", "eager_extra", rank) in found
    assert ("side_path_step_ms", "eager_merged", "0") in found

    checks = [r for r in rows if r["measure"] == "bitwise_check"]
    assert [r["rank"] for r in checks] == ["4", "16"]
    assert all(r["passed"] == "True" for r in checks), [r["detail"] for r in checks]
    # diffusers' fused weights are base + delta of the set switched to (the rebuild row checks that it merged B)
    rebuild = [r for r in rows if r["measure"] == "rebuild_merged"]
    assert all(float(r["detail"].rsplit("rel. error ", 1)[1].split()[0]) < 1e-4 for r in rebuild)
