"""The Qwen-Image GPU benchmarks as CPU dry runs on tiny weights, and the linears that run in FP8."""

from __future__ import annotations

from diffusers import QwenImageTransformer2DModel

from checkpoints import resolve
from components.fp8 import fp8_layer_names
from registry import component_of


def test_qwen_fp8_layers_are_each_blocks_twelve_matmuls(stack_dirs) -> None:
    path = resolve("qwen-image-2512", "tiny", stack_dirs.checkpoints).path / "transformer"
    model = QwenImageTransformer2DModel.from_pretrained(path)
    names = fp8_layer_names(model, component_of("qwen_image_transformer")[1].fp8_layers)
    # q/k/v/out of both streams, and the two linears of each stream's MLP (720 at 60 blocks full size)
    assert len(names) == 12 * len(model.transformer_blocks)
    assert "transformer_blocks.0.img_mlp.net.2" in names and "transformer_blocks.0.attn.to_add_out" in names
    assert not any("mod" in n or "norm" in n or n.startswith(("img_in", "txt_in", "proj_out")) for n in names)


def test_qwen_benchmark_runs_on_tiny_weights(tmp_path) -> None:
    """The GPU benchmark's code path (eager pipeline vs our proxy + served module) as a CPU dry run: the served
    path's image equals eager's up to float noise, and the CSV has both routes' rows."""
    import csv

    from families.qwen_image import benchmark as qwen_benchmark

    assert qwen_benchmark.main(["--smoke", "--variants", "eager,ours", "--size", "256", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "qwen_image_cpu_smoke.csv").open()))
    assert {(r["model"], r["variant"]) for r in rows} == {
        (m, v) for m in ("qwen-image-2512", "qwen-image-2512-fast") for v in ("eager", "ours")
    }
    assert all(float(r["psnr_vs_eager_db"]) > 60 for r in rows if r["variant"] == "ours")


def test_qwen_text_encoder_benchmark_runs_on_the_tiny_encoder(tmp_path) -> None:
    import csv

    from families.qwen_image import text_encoder_benchmark as qwen_text_encoder_benchmark

    assert qwen_text_encoder_benchmark.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "qwen_text_encoder_cpu_smoke.csv").open()))
    by_case = {r["case"]: r for r in rows}
    # The edit prompt carries the condition image's tokens (vision tower), the text-to-image one does not.
    assert int(by_case["edit_one_image"]["text_tokens"]) > int(by_case["text_to_image"]["text_tokens"]) > 0


def test_qwen_served_benchmark_assembles_its_checkpoint_and_times_the_plain_pipeline(tmp_path) -> None:
    """The served Qwen benchmark's CPU dry run: the checkpoint folder it assembles loads in the stock pipeline, which
    runs at both step counts (the served side needs a GPU; tiny CPU timings are too noisy to check)."""
    import csv

    from families.qwen_image import served_benchmark as qwen_served

    argv = ["--smoke", "--size", "256", "--steps", "3", "--short-steps", "1", "--work", str(tmp_path), "--out"]
    assert qwen_served.main([*argv, str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "qwen_served_cpu_smoke.csv").open()))
    assert [r["variant"] for r in rows] == ["eager"]
    assert float(rows[0]["end_to_end_s"]) > 0
    assert (tmp_path / "checkpoint" / "model_index.json").is_file()
