"""``.medzoo`` files: pack a run, predict from it without unpacking into the user's folders, unpack it, and
refuse damaged, foreign or malicious files with one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.cli import main
from medzoo.engine.checkpoint import load_checkpoint, load_model_from_run
from medzoo.errors import CheckpointError
from medzoo.inference.predictor import Predictor
from medzoo.io.readers import read_volume, write_volume
from medzoo.packaging import MANIFEST, open_model, pack_model, read_manifest, unpack_model
from medzoo.utils import current_umask
from support.inference import blob_image, make_run

UNET = {"model_kwargs": {"features": [4, 8]}, "patch_size": (16, 16, 16),
        "labels": {0: "background", 1: "liver", 2: "tumour"}}


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch):
    cache = tmp_path / "model_cache"
    monkeypatch.setenv("MEDZOO_MODEL_CACHE", str(cache))
    return cache


@pytest.fixture
def run(tmp_path):
    run_dir, _ = make_run(tmp_path / "run", "unet3d", 1, 3, **UNET)
    (run_dir / "config.json").write_text(json.dumps({"data": "/data/Task03_Liver", "layout": "msd"}))
    (run_dir / "metrics.csv").write_text("epoch,train_loss,lr,val_dice_mean,val_dice_liver,val_dice_tumour\n"
                                         "1,0.9,0.01,0.5,0.6,0.4\n")
    (run_dir / ".medzoo_cache").mkdir()
    (run_dir / ".medzoo_cache" / "model_x.onnx").write_bytes(b"cache" * 100)
    ckpt = load_checkpoint(run_dir / "checkpoint_best.pt")
    ckpt["optimizer"] = {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]}
    torch.save(ckpt, run_dir / "checkpoint_best.pt")
    return run_dir


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of the zip ``src`` whose entries pass through ``change(name, data) -> [(name, data), ...]``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            for name, data in change(info.filename, zin.read(info.filename)):
                zout.writestr(name, data)
    return dst


def _with_entry(src: Path, dst: Path, name: str, data: bytes) -> Path:
    """Add entry ``name`` to a packed model with a manifest that lists it correctly (so only its name is bad)."""
    def change(entry, content):
        if entry == MANIFEST:
            manifest = json.loads(content)
            manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            return [(entry, json.dumps(manifest)), (name, data)]
        return [(entry, content)]

    return _rewrite(src, dst, change)


def test_pack_holds_weights_plan_card_and_checksums_but_no_cache_or_optimizer(run, tmp_path):
    packed = pack_model(run, tmp_path / "model.medzoo")
    with zipfile.ZipFile(packed) as zf:
        names = set(zf.namelist())
        assert {"model.safetensors", "plan.json", "labels.json", "config.json", "metrics.csv", "README.md",
                "versions.json", MANIFEST} == names
        assert json.loads(zf.read("labels.json")) == {"0": "background", "1": "liver", "2": "tumour"}
        assert "torch" in json.loads(zf.read("versions.json"))
        card = zf.read("README.md").decode()
        assert "unet3d" in card and "liver" in card and "Task03_Liver" in card
    manifest = read_manifest(packed)
    assert manifest["with_optimizer"] is False and manifest["checkpoint"] == "best"
    assert set(manifest["files"]) == names - {MANIFEST}
    assert all(len(meta["sha256"]) == 64 for meta in manifest["files"].values())


def test_a_packed_model_predicts_the_labels_of_its_run_folder(run, tmp_path, fp32_on_cpu):
    packed = pack_model(run, tmp_path / "model.medzoo")
    image = blob_image((21, 18, 13), seed=3)
    kwargs = {"device": "cpu", "amp": "none", "memory_format": "contiguous"}
    expected = Predictor.from_run(run, **kwargs).predict_volume(image)
    opened = open_model(packed)
    got = Predictor.from_run(opened, **kwargs).predict_volume(image)
    assert np.array_equal(got.array, expected.array)
    assert len(np.unique(expected.array)) > 1  # the comparison is not between two empty maps
    assert opened.is_relative_to(tmp_path / "model_cache")  # nothing unpacked beside the user's files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.medzoo", "model_cache", "run"]
    assert open_model(packed) == opened  # unpacked once, then reused
    assert open_model(run) == run  # run folders pass through


def test_unpack_gives_a_run_folder_with_the_same_weights(run, tmp_path):
    packed = pack_model(run, tmp_path / "model.medzoo")
    out = unpack_model(packed, tmp_path / "unpacked")
    model, plan = load_model_from_run(out)
    reference, _ = load_model_from_run(run)
    assert plan.labels == {0: "background", 1: "liver", 2: "tumour"}
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert "optimizer" not in load_checkpoint(out / "checkpoint_best.pt")
    assert not (out / ".medzoo_cache").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()  # a folder like any other, not private
    with pytest.raises(CheckpointError, match="not an empty folder"):
        unpack_model(packed, out)


def test_with_optimizer_packs_the_training_state(run, tmp_path):
    (run / "splits.json").write_text('{"folds": []}')
    packed = pack_model(run, tmp_path / "model.medzoo", with_optimizer=True)
    out = unpack_model(packed, tmp_path / "unpacked")
    ckpt = load_checkpoint(out / "checkpoint_best.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert (out / "splits.json").is_file()


@pytest.mark.parametrize("name", ["../escaped.txt", "/abs/escaped.txt", "a/../../escaped.txt", "c:\\evil.txt"])
def test_entries_escaping_the_target_folder_are_refused(run, tmp_path, name):
    packed = pack_model(run, tmp_path / "model.medzoo")
    bad = _with_entry(packed, tmp_path / "bad.medzoo", name, b"gotcha")
    for load in (lambda: unpack_model(bad, tmp_path / "out" / "deep"), lambda: open_model(bad)):
        with pytest.raises(CheckpointError, match="outside the folder"):
            load()
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "out" / "deep").exists()


def test_a_symlink_entry_is_refused(run, tmp_path):
    packed = pack_model(run, tmp_path / "model.medzoo")
    bad = tmp_path / "link.medzoo"
    with zipfile.ZipFile(packed) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        link = zipfile.ZipInfo("weights_link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zout.writestr(link, "/etc/passwd")
    with pytest.raises(CheckpointError, match="is a link"):
        unpack_model(bad, tmp_path / "out")


def test_unknown_formats_are_refused(run, tmp_path):
    not_zip = tmp_path / "weights.medzoo"
    not_zip.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a zip"):
        open_model(not_zip)
    packed = pack_model(run, tmp_path / "model.medzoo")
    no_manifest = _rewrite(packed, tmp_path / "a.medzoo", lambda n, d: [] if n == MANIFEST else [(n, d)])
    with pytest.raises(CheckpointError, match="unknown format"):
        unpack_model(no_manifest, tmp_path / "out")

    def other_format(name, data, **change):
        return [(name, json.dumps({**json.loads(data), **change}) if name == MANIFEST else data)]

    foreign = _rewrite(packed, tmp_path / "b.medzoo", lambda n, d: other_format(n, d, format="nnunet"))
    with pytest.raises(CheckpointError, match="unknown format 'nnunet'"):
        unpack_model(foreign, tmp_path / "out")
    newer = _rewrite(packed, tmp_path / "c.medzoo", lambda n, d: other_format(n, d, format_version=99))
    with pytest.raises(CheckpointError, match="upgrade medzoo"):
        open_model(newer)


def test_failed_checksums_are_refused(run, tmp_path):
    packed = pack_model(run, tmp_path / "model.medzoo")

    def tamper(name, data):
        return [(name, data.replace(b"liver", b"LIVER") if name == "plan.json" else data)]

    bad = _rewrite(packed, tmp_path / "bad.medzoo", tamper)
    with pytest.raises(CheckpointError, match="checksum of plan.json does not match"):
        unpack_model(bad, tmp_path / "out")
    with pytest.raises(CheckpointError, match="checksum"):
        open_model(bad)
    assert not (tmp_path / "out").exists()
    unlisted = _rewrite(packed, tmp_path / "extra.medzoo", lambda n, d: [(n, d)] + ([("x.py", b"1")] if n == MANIFEST else []))
    with pytest.raises(CheckpointError, match="do not match its manifest"):
        unpack_model(unlisted, tmp_path / "out")


def test_pack_and_unpack_commands(run, tmp_path, capsys):
    packed = tmp_path / "shared" / "model.medzoo"
    assert main(["pack", str(run), str(packed), "--with-optimizer"]) == 0
    assert packed.is_file() and "wrote" in capsys.readouterr().out
    assert main(["unpack", str(packed), str(tmp_path / "unpacked")]) == 0
    assert (tmp_path / "unpacked" / "plan.json").is_file()
    assert main(["unpack", str(tmp_path / "missing.medzoo"), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medzoo unpack: error:") and "missing.medzoo" in err and "\n" not in err


def test_predict_command_takes_a_packed_model(run, tmp_path, fp32_on_cpu):
    packed = pack_model(run, tmp_path / "model.medzoo")
    scans = tmp_path / "scans"
    scans.mkdir()
    for seed in (1, 2):
        write_volume(blob_image((17, 19, 12), seed=seed), scans / f"case{seed}.nii.gz")
    common = ["--input", str(scans), "--backend", "torch", "--amp", "none", "--no-progress"]
    assert main(["predict", "--model", str(run), "--output", str(tmp_path / "from_run"), *common]) == 0
    assert main(["predict", "--model", str(packed), "--output", str(tmp_path / "from_file"), *common]) == 0
    for name in ("case1.nii.gz", "case2.nii.gz"):
        expected = read_volume(tmp_path / "from_run" / name)
        got = read_volume(tmp_path / "from_file" / name)
        assert np.array_equal(got.array, expected.array) and np.allclose(got.affine, expected.affine)


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_run_from_the_earlier_format_predicts_its_recorded_labels_from_its_packed_file(tmp_path):
    """``tests/fixtures/run_v0`` was made by main at 83c5058."""
    import medzoo
    from medzoo.info import run_info

    packed = pack_model(FIXTURES / "run_v0", tmp_path / "v0.medzoo")
    report = medzoo.predict(packed, FIXTURES / "run_v0_case" / "input.nii.gz", tmp_path / "pred", backend="torch",
                            amp="none", memory_format="contiguous", progress=False, device="cpu")
    assert not report.failed
    want = read_volume(FIXTURES / "run_v0_case" / "expected_labels.nii.gz")
    assert np.array_equal(read_volume(tmp_path / "pred" / "input.nii.gz").array, want.array)
    assert run_info(packed)["training"]["epochs"] == 1


@pytest.mark.slow
def test_packed_with_the_optimizer_an_unpacked_run_resumes(tmp_path, monkeypatch):
    import medzoo
    from medzoo.data.phantom import make_phantom_dataset
    from medzoo.engine.config import TrainConfig

    packed = pack_model(FIXTURES / "run_v0", tmp_path / "v0.medzoo", checkpoint="last", with_optimizer=True)
    unpack_model(packed, tmp_path / "run_v0")
    make_phantom_dataset(tmp_path / "phantom", cases=4, seed=3, shape=(24, 24, 16), test_cases=1)
    monkeypatch.chdir(tmp_path)  # the run's config names its data relatively ("phantom")
    result = medzoo.train(TrainConfig.load(Path("run_v0") / "config.json"), resume=True)
    assert (result.epochs, result.steps) == (2, 4)


# --- the model cache ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncate", "delete"])
@pytest.mark.parametrize("name", ["checkpoint_best.pt", "plan.json"])
def test_a_damaged_unpacked_copy_is_unpacked_again_with_one_warning(run, tmp_path, caplog, how, name):
    packed = pack_model(run, tmp_path / "model.medzoo")
    opened = open_model(packed)
    weights = load_checkpoint(opened / "checkpoint_best.pt")["model"]
    whole = (opened / name).read_bytes()
    if how == "truncate":
        (opened / name).write_bytes(whole[: len(whole) // 2])
    else:
        (opened / name).unlink()
    with caplog.at_level("INFO", logger="medzoo.packaging"):
        assert open_model(packed) == opened
        assert open_model(packed) == opened  # whole again: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and name in warnings[0] and "unpacking it again" in warnings[0], warnings
    assert len((opened / name).read_bytes()) == len(whole)
    healed = load_checkpoint(opened / "checkpoint_best.pt")["model"]
    assert healed.keys() == weights.keys() and all(torch.equal(healed[k], weights[k]) for k in weights)
    load_model_from_run(opened)  # predicts again


def test_a_copy_unpacked_by_an_earlier_medzoo_is_unpacked_again_quietly(run, tmp_path, caplog):
    from medzoo.packaging import ENTRY_FILE

    packed = pack_model(run, tmp_path / "model.medzoo")
    opened = open_model(packed)
    (opened / ENTRY_FILE).unlink()
    with caplog.at_level("WARNING", logger="medzoo.packaging"):
        assert open_model(packed) == opened
    assert not caplog.records and (opened / ENTRY_FILE).is_file()


def test_the_cache_keeps_a_copy_while_its_file_is_there_unchanged(run, tmp_path, model_cache):
    kept = pack_model(run, tmp_path / "kept.medzoo")
    replaced = pack_model(run, tmp_path / "replaced.medzoo", checkpoint="last")
    deleted_run, _ = make_run(tmp_path / "other", "unet3d", 1, 3, seed=1, **UNET)
    deleted = pack_model(deleted_run, tmp_path / "deleted.medzoo")
    copies = {p: open_model(p) for p in (kept, replaced, deleted)}
    assert len(set(copies.values())) == 3
    deleted.unlink()
    pack_model(run, replaced, with_optimizer=True)  # new content at the same path: its old copy is of no use
    stale_staging = model_cache / ".unpacking.killed"
    fresh_staging = model_cache / ".unpacking.in_progress"
    for folder in (stale_staging, fresh_staging):
        folder.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale_staging, (old, old))
    (model_cache / "notes").mkdir()  # not ours: never touched
    new_copy = open_model(replaced)  # a new unpack cleans the cache
    assert sorted(p.name for p in model_cache.iterdir()) == sorted(
        [copies[kept].name, new_copy.name, fresh_staging.name, "notes"])


def test_clean_model_cache_removes_copies_of_files_that_are_gone(run, tmp_path, model_cache):
    from medzoo.packaging import clean_model_cache

    packed = pack_model(run, tmp_path / "model.medzoo")
    opened = open_model(packed)
    assert clean_model_cache() == []
    moved = packed.rename(tmp_path / "moved.medzoo")
    assert clean_model_cache() == [opened] and not opened.exists()
    assert open_model(moved) == opened  # unpacked again from where it is now
