"""benchmarks.gpu: the GPU benchmarks' code paths (on the CPU with --device cpu; on CUDA where there is one)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import gpu


def test_without_cuda_it_reports_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = gpu.main(["--quick", "--out", str(tmp_path)])
    assert res["skipped"] == "CUDA is not available" and res["rows"] == []
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"]


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        gpu.main(["--quick", "--device", "cpu", "--only", "training_step,nope", "--out", str(tmp_path)])


def test_helpers_on_the_cpu():
    assert gpu.precisions(torch.device("cpu")) == ["fp32", "bf16"]
    calls = []
    fn = gpu.synced(torch.device("cpu"))(lambda: calls.append(1))
    fn()
    assert calls == [1]
    assert math.isnan(gpu.peak_memory_mb(lambda: None, torch.device("cpu")))
    run, flops = gpu.conv_peak(torch.device("cpu"), torch.bfloat16, quick=True)
    run()
    assert flops == 2.0 * 8 * 8 * 27 * 16**3


def _check(rows, device: torch.device) -> None:
    sections = {r["section"] for r in rows}
    assert {"training_step", "models", "sliding_window"} <= sections
    assert not [r for r in rows if r.get("skipped")]
    for row in rows:
        if row["section"] == "training_step":
            assert row["medzoo_ms"] > 0 and row["dna_ms"] > 0 and row["speedup_vs_dna"] > 0
            assert row["medzoo_tflops"] > 0 and row["conv_peak_tflops"] > 0
            if device.type == "cuda":
                assert row["medzoo_mem_mb"] > 0 and row["dna_mem_mb"] > 0
        if row["section"] == "models":
            assert row["train_ms"] > 0 and row["train_tflops"] > 0
        if row["section"] == "sliding_window":
            if row["precision"] == "fp32":
                assert row["labels_identical"] and row["max_abs_diff"] < 1e-4
            else:
                assert row["label_agreement"] > 0.99  # autocast: only near-ties may flip


def test_quick_on_the_cpu(tmp_path):
    pytest.importorskip("monai")
    pytest.importorskip("dynamic_network_architectures")
    res = gpu.main(["--quick", "--device", "cpu", "--reps", "1", "--warmup", "0", "--only",
                    "training_step,models,sliding_window", "--out", str(tmp_path)])
    _check(res["rows"], torch.device("cpu"))
    assert {r["precision"] for r in res["rows"]} == {"fp32", "bf16"}
    assert "**training_step**" in res["markdown"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_quick_on_cuda(tmp_path):
    pytest.importorskip("monai")
    pytest.importorskip("dynamic_network_architectures")
    res = gpu.main(["--quick", "--reps", "2", "--out", str(tmp_path)])
    _check(res["rows"], torch.device("cuda"))
    assert "fp16" in {r["precision"] for r in res["rows"]}
    predict = [r for r in res["rows"] if r["section"] == "predict"]
    assert predict and predict[0]["geometry_exact"] and predict[0]["label_agreement"] > 0.99


def test_end_to_end_sides_of_a_gpu_run_on_the_cpu():
    """The GPU's end-to-end sides (medzoo under autocast and in fp32, MONAI in fp32 and under autocast) run
    through the same code on the CPU (bf16 there)."""
    pytest.importorskip("monai")
    from benchmarks.sliding_window import end_to_end, trained_net

    shape, patch, features = (40, 48, 40), (24, 24, 24), (4, 8)
    net, _ = trained_net(shape, features, 3, 16, None)
    row = end_to_end(net, features, shape, patch, 4, 1, 1, sides=["medzoo", "medzoo_fp32", "monai", "monai_amp"])
    assert row["geometry_exact"]
    assert row["voxels_differing_medzoo_fp32"] == 0  # fp32: MONAI's labels
    from medzoo.runtime import cpu_has_native_bf16

    if cpu_has_native_bf16():  # medzoo's default predicts in bf16 on this CPU: labels move at near-ties only
        assert row["voxels_differing_medzoo"] < 0.01 * math.prod(shape)
    else:  # fp32 everywhere
        assert row["voxels_differing_medzoo"] == 0
    assert row["ratio_monai_amp_over_medzoo"] > 0 and row["ratio_monai_over_medzoo_fp32"] > 0


def test_end_to_end_cpu_sides_compare_each_backend_with_monai():
    """The CPU's sides: the PyTorch backend in the default layout is MONAI's arithmetic exactly; every side
    reports how close to a tie its differing voxels were."""
    pytest.importorskip("monai")
    from benchmarks.sliding_window import end_to_end, trained_net

    shape, patch, features = (40, 48, 40), (24, 24, 24), (4, 8)
    net, _ = trained_net(shape, features, 3, 16, None)
    sides = ["medzoo", "medzoo_torch", "medzoo_torch_contiguous", "monai"]
    row = end_to_end(net, features, shape, patch, 4, 1, 1, sides=sides)
    assert row["geometry_exact"]
    assert row["voxels_differing_medzoo_torch_contiguous"] == 0
    assert row["max_top2_gap_differing_medzoo_torch_contiguous"] == 0.0
    assert 0.0 <= row["max_top2_gap_differing_medzoo_torch"] <= 1.0
    assert row["ratio_monai_over_medzoo_torch_contiguous"] > 0
