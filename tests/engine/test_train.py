"""Training end to end on a tiny phantom: run folder, checkpoints, resume exactness, time budget, 2D on 3D,
deep supervision, transfer, DDP (slow)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.engine.checkpoint import load_checkpoint, load_model_from_run
from medzoo.engine.config import TrainConfig
from medzoo.engine.trainer import DATA_WAIT_WARN, train
from medzoo.errors import CheckpointError, ConfigError
from support.clock import FakeClock

TINY3D = {"features": [4, 8]}
SHAPE = (24, 28, 20)

@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from medzoo.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=5, seed=0, shape=SHAPE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One preprocessed-case cache shared by the runs (same preprocessing settings -> reused)."""
    return tmp_path_factory.mktemp("cache")


def _config(data: Path, out: Path, cache_dir: Path | None = None, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="unet3d", model_kwargs=TINY3D, epochs=2,
                iterations_per_epoch=2, batch_size=2, patch_size=(16, 16, 16), progress=False, device="cpu",
                num_workers=0, log_images=True, cache_dir=None if cache_dir is None else str(cache_dir))
    base.update(kw)
    return TrainConfig(**base)


def test_cli_train_writes_a_complete_run_folder(phantom, tmp_path, capsys):
    from medzoo.cli import main

    run = tmp_path / "run"
    code = main(["train", "--data", str(phantom), "--out", str(run), "--model", "unet3d",
                 "--model-arg", "features=[4, 8]", "--epochs", "2", "--iterations", "2", "--batch-size", "2",
                 "--patch-size", "16", "16", "16", "--device", "cpu", "--num-workers", "0", "--no-progress"])
    assert code == 0
    assert "run folder" in capsys.readouterr().out
    for name in ("plan.json", "config.json", "splits.json", "checkpoint_last.pt", "checkpoint_best.pt",
                 "metrics.csv"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4 and ckpt["format_version"] == 1
    assert json.loads((run / "config.json").read_text())["model_kwargs"] == {"features": [4, 8]}
    splits = json.loads((run / "splits.json").read_text())["folds"][0]
    assert len(splits["val"]) == 1 and len(splits["train"]) == 4
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "lr", "val_dice_mean", "val_dice_csf", "val_dice_white_matter", "seconds"} <= set(rows[0])
    assert 0.0 <= float(rows[-1]["val_dice_mean"]) <= 1.0
    model, plan = load_model_from_run(run)
    assert plan.patch_size == (16, 16, 16) and plan.num_classes == 4
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 4, 16, 16, 16)
    # the inference engineer's predictor takes the run folder as it is
    from medzoo.inference.predictor import Predictor
    from medzoo.io.readers import read_volume

    scan = read_volume(sorted((phantom / "imagesTr").iterdir())[0])
    pred = Predictor.from_run(run, device="cpu").predict_volume(scan)
    assert pred.array.shape == (1, *SHAPE) and np.array_equal(pred.affine, scan.affine)
    # an existing run is never overwritten
    assert main(["train", "--data", str(phantom), "--out", str(run), "--epochs", "1"]) == 1


def test_training_lowers_the_loss(phantom, cache, tmp_path):
    result = train(_config(phantom, tmp_path / "r", cache, epochs=3, iterations_per_epoch=3, lr=3e-3, val_every=3,
                           log_images=False))
    with (tmp_path / "r" / "metrics.csv").open() as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0]
    assert result.epochs == 3 and result.steps == 9 and result.stop_reason == "epochs"
    assert result.best_epoch == 3 and result.best_metric == pytest.approx(result.final_metrics["val_dice_mean"])


RESUME_SCRIPT = '''
import sys, time
from medzoo.engine.config import TrainConfig
from medzoo.engine.trainer import Trainer, train

data, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "slow":  # same arithmetic until epoch 2's first step, which says so and waits to be killed
    step = Trainer.optimizer_step
    def slow_step(self, *a, **k):
        if self.state.step == 3:
            open(out + ".in_epoch_2", "w").close()
            time.sleep(600)
        return step(self, *a, **k)
    Trainer.optimizer_step = slow_step
config = TrainConfig(data=data, out=out, model="unet3d", model_kwargs={"features": [4, 8]}, epochs=2,
                     iterations_per_epoch=3, batch_size=2, patch_size=(16, 16, 16), progress=False, device="cpu",
                     num_workers=1, deterministic=True, seed=5, optimizer="adamw", schedule="cosine",
                     warmup_epochs=1, val_every=1, log_images=False)
if mode == "resume":
    train(TrainConfig.load(out + "/config.json"), resume=True)
else:
    train(config)
'''


def test_resume_after_sigkill_matches_uninterrupted_run(phantom, tmp_path):
    script = tmp_path / "run_train.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(phantom), str(full), "full"], check=True, env=env,
                   timeout=240, capture_output=True)

    proc = subprocess.Popen([sys.executable, str(script), str(phantom), str(killed), "slow"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_path, marker = killed / "checkpoint_last.pt", tmp_path / "killed.in_epoch_2"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, "training ended before epoch 2"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(ckpt_path)["epoch"] == 1  # killed mid epoch 2
    with pytest.raises(ConfigError, match="already exists"):
        train(TrainConfig.load(killed / "config.json"))  # not a resume: refused
    subprocess.run([sys.executable, str(script), str(phantom), str(killed), "resume"], check=True, env=env,
                   timeout=240, capture_output=True)

    a = load_checkpoint(full / "checkpoint_last.pt")
    b = load_checkpoint(killed / "checkpoint_last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    exp_avg_a = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    exp_avg_b = [s["exp_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(exp_avg_a, exp_avg_b))
    with (killed / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_resume_needs_a_checkpoint(phantom, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_config(phantom, tmp_path / "none"), resume=True)


def test_time_budget_stops_within_budget(phantom, cache, tmp_path, monkeypatch):
    # On a clock that moves 1 s per training step and 2 s per validation, the budget's decisions are the
    # same on any machine (how fast it really trains is the benchmarks' business).
    import medzoo.engine.budget as budget_module
    import medzoo.engine.segment as segment
    import medzoo.engine.trainer as trainer

    clock = FakeClock().install(monkeypatch, trainer, budget_module)
    real_step, real_validate = trainer.Trainer.optimizer_step, segment.validate

    def step(*args):
        clock.advance(1.0)
        return real_step(*args)

    def validate(*args, **kwargs):
        clock.advance(2.0)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "optimizer_step", step)
    monkeypatch.setattr(segment, "validate", validate)
    budget = 30.0
    # the trainer's budget alone: the planner's budget fitting would price steps on the real clock (and correct
    # the user's cached step prices with these fake ones)
    result = train(_config(phantom, tmp_path / "b", cache, epochs=None, time_budget=f"{budget}s",
                           iterations_per_epoch=5, log_images=False, plan_for_budget=False))
    assert result.stop_reason == "time_budget"
    assert 0.6 * budget < result.seconds <= budget  # used most of the budget, never more
    assert result.steps >= 10
    assert "val_dice_mean" in result.final_metrics  # the final validation ran inside the budget
    assert load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["step"] == result.steps


def test_the_last_validation_before_the_budget_ends_is_the_mirrored_final_one(phantom, cache, tmp_path, monkeypatch):
    # One step per epoch and a plain validation due after every epoch: the budget always runs out at an epoch's
    # end, right after a plain validation. The time reserved for the final validation with mirroring must be
    # spent on it, not left over.
    import medzoo.engine.budget as budget_module
    import medzoo.engine.segment as segment
    import medzoo.engine.trainer as trainer

    clock = FakeClock().install(monkeypatch, trainer, budget_module)
    real_step, real_validate = trainer.Trainer.optimizer_step, segment.validate
    mirrored = []

    def step(*args):
        clock.advance(1.0)
        return real_step(*args)

    def validate(*args, **kwargs):
        mirrored.append(bool(kwargs.get("mirror_axes")))
        clock.advance(2.0 * (8 if mirrored[-1] else 1))
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "optimizer_step", step)
    monkeypatch.setattr(segment, "validate", validate)
    result = train(_config(phantom, tmp_path / "m", cache, epochs=None, time_budget="100s", iterations_per_epoch=1,
                           val_time_fraction=None, log_images=False, plan_for_budget=False))
    assert result.stop_reason == "time_budget" and result.seconds <= 100
    assert mirrored[-1] and mirrored.count(True) == 1  # the last validation, and only it, mirrored
    assert result.seconds > 100 - 16  # what was left is less than the mirrored validation took


def test_2d_network_on_3d_cases(phantom, cache, tmp_path):
    result = train(_config(phantom, tmp_path / "r2d", cache, model="unet2d", model_kwargs={"features": [4, 8]},
                           patch_size=(16, 16), context_slices=1, batch_size=4))
    model, plan = load_model_from_run(tmp_path / "r2d")
    assert plan.spatial_dims == 2 and plan.in_channels == 6 and plan.context_slices == 1
    assert 0.0 <= result.final_metrics["val_dice_mean"] <= 1.0
    with torch.no_grad():
        assert model(torch.zeros(1, 6, 16, 16)).shape == (1, 4, 16, 16)


def test_deep_supervision_network_trains(phantom, cache, tmp_path):
    result = train(_config(phantom, tmp_path / "ds", cache, model_kwargs={"features": [4, 8, 16], "deep_supervision": True},
                           epochs=1, iterations_per_epoch=1, log_images=False))
    assert result.steps == 1 and np.isfinite(result.best_metric)


def test_init_from_and_freeze(phantom, cache, tmp_path):
    train(_config(phantom, tmp_path / "src", cache, epochs=1, iterations_per_epoch=1, log_images=False))
    source = load_checkpoint(tmp_path / "src" / "checkpoint_last.pt")["model"]
    train(_config(phantom, tmp_path / "dst", cache, epochs=1, iterations_per_epoch=1, init_from=str(tmp_path / "src" / "checkpoint_last.pt"),
                  freeze=["encoder"], log_images=False))
    after = load_checkpoint(tmp_path / "dst" / "checkpoint_last.pt")["model"]
    enc = [k for k in after if k.startswith("encoder.") and k.endswith("weight")]
    dec = [k for k in after if k.startswith("decoder.") and k.endswith("weight")]
    assert enc and dec
    assert all(torch.equal(after[k], source[k]) for k in enc)  # frozen and initialised from the source
    assert not all(torch.equal(after[k], source[k]) for k in dec)  # trained further


def _ddp_run(phantom, tmp_path, processes: int, device: str) -> None:
    """Train 2 epochs of 3 steps with ``processes`` DDP ranks on ``device`` (gloo on the CPU, NCCL on GPUs)."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f'''
        from medzoo.engine.config import TrainConfig
        from medzoo.engine.trainer import train
        train(TrainConfig(data={str(phantom)!r}, out={str(tmp_path / "ddp")!r}, model="unet3d",
                          model_kwargs={{"features": [4, 8]}}, epochs=2, iterations_per_epoch=3, batch_size=2,
                          patch_size=(16, 16, 16), progress=False, device={device!r}, num_workers=0, folds=1))
    '''))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                           "--standalone", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    ckpt = load_checkpoint(run / "checkpoint_last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and 0.0 <= float(rows[-1]["val_dice_mean"]) <= 1.0
    model, _ = load_model_from_run(run)
    assert not any(k.startswith("module.") for k in model.state_dict())


@pytest.mark.slow
def test_ddp_two_cpu_processes(phantom, tmp_path):
    _ddp_run(phantom, tmp_path, 2, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ddp_nccl_one_process_per_gpu(phantom, tmp_path):
    _ddp_run(phantom, tmp_path, torch.cuda.device_count(), "cuda")


def test_validation_time_fraction_spaces_out_slow_validations():
    from medzoo.engine.budget import Budget, validation_due
    from medzoo.engine.distributed import DistInfo

    cpu = torch.device("cpu")
    single = DistInfo()
    budget = Budget(600.0, time.monotonic() - 100.0)  # 100 s into a 10-minute run
    budget.val_time = 8.0
    assert validation_due(budget, 0.1, single, cpu)  # 8 s of validation within 10 % of 100 s
    budget.val_total = 8.0
    assert not validation_due(budget, 0.1, single, cpu)  # a second one would make 16 s > 10 s
    assert validation_due(budget, None, single, cpu)  # switched off
    assert validation_due(Budget(None, time.monotonic()), 0.1, single, cpu)  # no budget: always due


def test_final_validation_mirrors_when_it_fits(phantom, cache, tmp_path, monkeypatch):
    import medzoo.engine.segment as segment

    calls = []
    real_validate = segment.validate

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mirror_axes"))
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(segment, "validate", spy)
    train(_config(phantom, tmp_path / "tta", cache, epochs=2, iterations_per_epoch=1, log_images=False))
    assert calls == [None, (0, 1, 2)]  # plain after epoch 1, mirrored over every axis at the end
    calls.clear()
    train(_config(phantom, tmp_path / "plain", cache, epochs=2, iterations_per_epoch=1, log_images=False,
                  final_tta=False))
    assert calls == [None, None]


def test_final_mirroring_is_dropped_when_it_would_eat_the_budget():
    from medzoo.engine.budget import Budget

    budget = Budget(100.0, time.monotonic())
    budget.tta_factor = 8
    budget.val_time = 2.0
    assert budget.final_factor() == 8  # 16 s <= 20 % of 100 s
    budget.val_time = 3.0
    assert budget.final_factor() == 1  # 24 s > 20 s: plain final validation
    assert budget.reserve() < 1.25 * 3.0 * 8


def test_compile_failure_falls_back_to_eager(phantom, cache, tmp_path, monkeypatch, caplog):
    """A network torch.compile cannot compile (here: one that raises on its first call) still trains, eagerly,
    with the same result as an eager run."""
    import medzoo.engine.trainer as trainer

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("backend compiler failed: no C++ compiler found")

    calls = []
    monkeypatch.setattr(trainer, "maybe_compile", lambda model, compile=None: calls.append(model) or Broken())
    with caplog.at_level("WARNING", logger="medzoo.engine.trainer"):
        compiled = train(_config(phantom, tmp_path / "c", cache, compile=True, log_images=False))
    assert len(calls) == 1 and "torch.compile failed" in caplog.text and "no C++ compiler" in caplog.text
    monkeypatch.setenv("MEDZOO_COMPILE", "0")
    eager = train(_config(phantom, tmp_path / "e", cache, log_images=False))
    assert compiled.steps == eager.steps == 4
    a = load_checkpoint(tmp_path / "c" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "e" / "checkpoint_last.pt")["model"]
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_training_matches_eager(phantom, cache, tmp_path, monkeypatch):
    """``compile=True`` really compiles (the first step takes the compile) and trains to the same losses."""
    import medzoo.engine.trainer as trainer

    used = []
    real = trainer.maybe_compile
    monkeypatch.setattr(trainer, "maybe_compile", lambda model, compile=None: used.append(real(model, compile))
                        or used[-1])
    train(_config(phantom, tmp_path / "c", cache, compile=True, log_images=False, seed=3))
    assert used and type(used[0]).__name__ == "OptimizedModule"
    train(_config(phantom, tmp_path / "e", cache, compile=False, log_images=False, seed=3))

    def losses(run):
        with (run / "metrics.csv").open() as f:
            return [float(r["train_loss"]) for r in csv.DictReader(f)]

    np.testing.assert_allclose(losses(tmp_path / "c"), losses(tmp_path / "e"), rtol=1e-3)


def test_resolved_augmentation_is_stored_and_kept_on_resume(phantom, cache, tmp_path, monkeypatch):
    import medzoo.engine.segment as segment

    seen = []
    real = segment.make_loader
    monkeypatch.setattr(segment, "make_loader", lambda *a: seen.append(a[4]) or real(*a))
    run = tmp_path / "r"
    train(_config(phantom, run, cache, epochs=1, log_images=False))
    ckpt = load_checkpoint(run / "checkpoint_last.pt")
    assert seen == ["standard"] and ckpt["augment"] == "standard"  # auto, 2 steps: the light set
    # a run resumed from a checkpoint older than the setting goes on with nnU-Net's set, as it was trained
    del ckpt["augment"]
    torch.save(ckpt, run / "checkpoint_last.pt")
    config = TrainConfig.load(run / "config.json")
    config.epochs = 2
    config.save(run / "config.json")
    seen.clear()
    train(TrainConfig.load(run / "config.json"), resume=True)
    assert seen == ["default"]


def test_amp_dtype_choice(monkeypatch):
    """CPU: bf16 with "auto" only where the CPU has native bf16, with "bf16" always, never fp16; CUDA: bf16
    where supported (auto), else fp16; "none" turns it off everywhere."""
    import medzoo.runtime as runtime
    from medzoo.engine.trainer import amp_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert amp_dtype(TrainConfig(amp="auto"), cpu) == (torch.bfloat16 if native else None)
        assert amp_dtype(TrainConfig(amp="bf16"), cpu) == torch.bfloat16
        assert amp_dtype(TrainConfig(amp="fp16"), cpu) is None
        assert amp_dtype(TrainConfig(amp="none"), cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(TrainConfig(amp="auto"), gpu) == torch.bfloat16
    assert amp_dtype(TrainConfig(amp="fp16"), gpu) == torch.float16
    assert amp_dtype(TrainConfig(amp="none"), gpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(TrainConfig(amp="auto"), gpu) == torch.float16


def test_cpu_bf16_guard_keeps_fp32_for_tiny_feature_maps_and_narrow_networks():
    """bf16 stays for a network whose convolutions see enough voxels; fp32 (None) when one sees fewer than
    BF16_MIN_CONV_VOXELS, and, for amp "auto", when the network is narrower than BF16_MIN_CONV_WIDTH. CUDA and
    fp32 pass through untouched; the census runs on shapes only and leaves the model as it was."""
    from medzoo.models import create_model
    from medzoo.runtime import BF16_MIN_CONV_VOXELS, BF16_MIN_CONV_WIDTH, bf16_guard, conv_census

    def net(features):
        return create_model("dynunet", in_channels=1, num_classes=3, spatial_dims=3, features=features)

    narrow, deep, wide = net([4, 8]), net([4, 8, 8, 8]), net([16, 32])
    census = conv_census(narrow, (1, 1, 16, 16, 16))
    assert census.smallest_input == 8**3 and 1 < census.mean_width < BF16_MIN_CONV_WIDTH
    assert conv_census(deep, (1, 1, 16, 16, 16)).smallest_input == 2**3 < BF16_MIN_CONV_VOXELS
    assert conv_census(wide, (1, 1, 16, 16, 16)).mean_width >= BF16_MIN_CONV_WIDTH
    assert conv_census(torch.nn.Linear(2, 2), (1, 2)).smallest_input is None
    patch = (1, 1, 16, 16, 16)  # what the trainer's setup_runtime passes: one patch of the plan
    cpu = torch.device("cpu")
    assert bf16_guard(torch.bfloat16, narrow, patch, cpu) == torch.bfloat16  # asked for: kept
    assert bf16_guard(torch.bfloat16, narrow, patch, cpu, auto=True) is None
    assert bf16_guard(torch.bfloat16, wide, patch, cpu, auto=True) == torch.bfloat16
    assert bf16_guard(torch.bfloat16, deep, patch, cpu) is None
    assert bf16_guard(None, deep, patch, cpu) is None
    assert bf16_guard(torch.bfloat16, deep, patch, torch.device("cuda")) == torch.bfloat16
    assert deep.training and all(p.device.type == "cpu" for p in deep.parameters())


def test_bf16_training_on_cpu(phantom, cache, tmp_path, caplog):
    """``amp="bf16"`` on the CPU: steps and validations autocast to bf16, the loss is finite, and the saved
    weights stay fp32 and finite."""
    import logging

    caplog.set_level(logging.INFO, logger="medzoo")
    out = tmp_path / "bf16"
    result = train(_config(phantom, out, cache, model="dynunet", model_kwargs={"features": [4, 8]}, amp="bf16",
                           log_images=False))
    assert "precision: bfloat16 autocast" in caplog.text
    assert result.steps == 4 and 0.0 <= result.final_metrics["val_dice_mean"] <= 1.0
    weights = load_checkpoint(out / "checkpoint_last.pt")["model"]
    floats = [w for w in weights.values() if w.is_floating_point()]
    assert floats and all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in floats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_on_cuda(phantom, cache, tmp_path, amp):
    """Mixed precision on a GPU: the run finishes with finite weights and a validation score."""
    result = train(_config(phantom, tmp_path / amp, cache, device="cuda", amp=amp, log_images=False))
    assert result.steps == 4 and 0.0 <= result.final_metrics["val_dice_mean"] <= 1.0
    weights = load_checkpoint(tmp_path / amp / "checkpoint_last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_memory_format_rules():
    from medzoo.models.registry import prefers_channels_last
    from medzoo.runtime import preferred_memory_format as runtime_rule

    def preferred_memory_format(setting, name, dims, device):
        return runtime_rule(setting, dims, device, prefers_channels_last(name))

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert preferred_memory_format("auto", "unet3d", 3, cpu) == torch.channels_last_3d  # its card asks for it
    assert preferred_memory_format("auto", "unet2d", 2, cpu) == torch.channels_last
    assert preferred_memory_format("auto", "segresnet", 3, cpu) == torch.channels_last_3d  # group norm kept fast
    assert preferred_memory_format("auto", "vnet", 3, cpu) is None  # measured slower in channels-last
    assert preferred_memory_format("auto", "unet3d", 3, gpu) is None  # not measured on GPUs
    assert preferred_memory_format("auto", "not_a_model", 3, cpu) is None
    assert preferred_memory_format("channels_last", "segresnet", 3, gpu) == torch.channels_last_3d
    assert preferred_memory_format("contiguous", "unet3d", 3, cpu) is None
    with pytest.raises(ConfigError, match="memory_format"):
        TrainConfig(data="d", out="o", memory_format="nhwc")


def test_channels_last_training_matches_contiguous(phantom, cache, tmp_path, caplog):
    """The same seed and batches in both layouts give the same weights up to float rounding."""
    import logging

    caplog.set_level(logging.INFO, logger="medzoo.engine.trainer")
    weights = {}
    for fmt in ("channels_last", "contiguous"):
        train(_config(phantom, tmp_path / fmt, cache, epochs=1, iterations_per_epoch=3, amp="none",
                      memory_format=fmt, log_images=False))
        weights[fmt] = load_checkpoint(tmp_path / fmt / "checkpoint_last.pt")["model"]
    assert "memory format: channels_last_3d" in caplog.text and "memory format: contiguous" in caplog.text
    assert weights["channels_last"].keys() == weights["contiguous"].keys()
    for key, value in weights["contiguous"].items():
        torch.testing.assert_close(weights["channels_last"][key], value, atol=2e-4, rtol=1e-3, msg=key)
    model, _ = load_model_from_run(tmp_path / "channels_last")  # loads into a default-layout network
    assert all(p.is_contiguous() for p in model.parameters())


def _wait_fractions(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["data_wait_fraction"]) for r in csv.DictReader(f)]


def test_a_slow_loader_shows_in_metrics_and_warns_once(phantom, cache, tmp_path, monkeypatch, caplog):
    # On a clock that moves 60 ms per batch delivered and 40 ms per step, every epoch waited 60 % of its time
    # for patches, on any machine.
    import medzoo.engine.segment as segment
    import medzoo.engine.trainer as trainer

    clock = FakeClock().install(monkeypatch, trainer)
    real_loader, real_step = segment.make_loader, trainer.Trainer.optimizer_step

    class SlowLoader:
        def __init__(self, *args):
            self.loader = real_loader(*args)

        def __iter__(self):
            for batch in self.loader:
                clock.advance(0.06)
                yield batch

        def close(self):
            self.loader.close()

    def step(*args):
        clock.advance(0.04)
        return real_step(*args)

    monkeypatch.setattr(segment, "make_loader", SlowLoader)
    monkeypatch.setattr(trainer.Trainer, "optimizer_step", step)
    with caplog.at_level("WARNING", logger="medzoo.engine.trainer"):
        train(_config(phantom, tmp_path / "slow", cache, epochs=3, iterations_per_epoch=4, log_images=False))
    assert _wait_fractions(tmp_path / "slow") == pytest.approx([0.6, 0.6, 0.6])
    warnings = [r for r in caplog.records if "waited for training patches" in r.getMessage()]
    assert len(warnings) == 1 and "epoch 2" in warnings[0].getMessage()  # once, the first epoch not judged


def test_a_loader_that_keeps_up_waits_little(phantom, cache, tmp_path, monkeypatch, caplog):
    # Each step ends only once the loader's worker has built the next batch, so past an epoch's first batch
    # the network never waits, however loaded the machine: the measured share is about one batch build in
    # thirteen (12 steps, the worker building one batch at a time), far below the warning's threshold.
    import threading

    import medzoo.engine.segment as segment
    from medzoo.data.loader import PatchLoader
    from medzoo.engine.trainer import Trainer

    built, done = set(), threading.Condition()
    real_make_batch, real_loader, real_step = PatchLoader.make_batch, segment.make_loader, Trainer.optimizer_step
    consumed = {"loader": None, "batches": 0}

    def make_batch(self, index):
        batch = real_make_batch(self, index)
        with done:
            built.add((self, index))
            done.notify_all()
        return batch

    class CountingLoader:  # the loader of one epoch, counting the batches the trainer took
        def __init__(self, *args):
            self.loader = real_loader(*args)
            consumed.update(loader=self.loader, batches=0)

        def __iter__(self):
            for batch in self.loader:
                consumed["batches"] += 1
                yield batch

        def close(self):
            self.loader.close()

    def step(*args):
        with done:  # the next batch (index = batches taken so far) is ready before the step ends
            assert done.wait_for(lambda: (consumed["loader"], consumed["batches"]) in built, timeout=120)
        return real_step(*args)

    monkeypatch.setattr(PatchLoader, "make_batch", make_batch)
    monkeypatch.setattr(segment, "make_loader", CountingLoader)
    monkeypatch.setattr(Trainer, "optimizer_step", step)
    with caplog.at_level("WARNING", logger="medzoo.engine.trainer"):
        train(_config(phantom, tmp_path / "fast", cache, epochs=2, iterations_per_epoch=12, num_workers=1,
                      log_images=False))  # fmt: skip
    fractions = _wait_fractions(tmp_path / "fast")
    assert len(fractions) == 2 and all(0.0 <= f < DATA_WAIT_WARN for f in fractions), fractions
    assert "waited for training patches" not in caplog.text


def test_data_wait_fraction_of_an_epoch():
    from medzoo.engine.trainer import data_wait_fraction

    assert data_wait_fraction(1.0, 4.0, 10) == 0.25
    assert data_wait_fraction(5.0, 4.0, 10) == 1.0  # clock granularity cannot make it exceed the epoch
    assert np.isnan(data_wait_fraction(0.0, 4.0, 0)) and np.isnan(data_wait_fraction(0.0, 0.0, 3))
