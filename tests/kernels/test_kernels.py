"""medzoo.kernels: the fused instance norm + leaky ReLU kernel (built on first use), and the fallback to
PyTorch's ops when it cannot be built, fails its check or is switched off."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from medzoo import kernels
from medzoo.models.layers.norm import instance_norm_act, memory_format_of

CL3, CL2 = torch.channels_last_3d, torch.channels_last
needs_compiler = pytest.mark.skipif(kernels._compiler() is None, reason="no C++ compiler on this machine")


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """An empty kernel cache and no kernel loaded yet; the process's kernel is loaded afresh afterwards."""
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.reset()
    yield tmp_path / "kernels"
    kernels.reset()


class _Ops(TorchDispatchMode):
    """Records the aten ops that run."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _reference(x, weight, bias, slope, grad):
    """Output and gradients of PyTorch's instance norm + leaky ReLU in float64."""
    x = x.detach().double().requires_grad_(True)
    w = None if weight is None else weight.detach().double().requires_grad_(True)
    b = None if bias is None else bias.detach().double().requires_grad_(True)
    y = F.instance_norm(x, weight=w, bias=b, eps=1e-5)
    y = y if slope is None else F.leaky_relu(y, slope)
    y.backward(grad.double())
    return [y] + [t.grad for t in (x, w, b) if t is not None]


@needs_compiler
def test_builds_once_into_the_cache_and_is_used(fresh_kernels, monkeypatch):
    kernel = kernels.load()
    assert kernel is not None and kernel.path.parent == fresh_kernels and kernel.path.exists()
    names = sorted(p.name for p in fresh_kernels.iterdir())  # no temporary file left behind
    assert names == sorted([kernel.path.name, kernel.path.with_suffix(".checked").name])
    assert kernels.load() is kernel  # loaded once per process
    kernels.reset()
    calls = []
    real_run = kernels.subprocess.run
    monkeypatch.setattr(kernels.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    assert kernels.load().path == kernel.path
    assert all("--version" in c for c in calls)  # the cached build is reused: the compiler only says its version
    x = torch.randn(2, 4, 5, 6, 7).contiguous(memory_format=CL3)
    with _Ops() as seen:
        y = instance_norm_act(x, torch.ones(4), torch.zeros(4), 1e-5, 0.01)
    assert "native_batch_norm" not in seen.ops and memory_format_of(y) == CL3


@needs_compiler
def test_a_passed_check_is_remembered_for_that_library_only(fresh_kernels, monkeypatch):
    """Later processes skip the self-check of a library that passed it; a changed file is checked again,
    and one that fails is not used."""
    from medzoo.kernels import check

    path = kernels.load().path
    assert path.with_suffix(".checked").exists()
    runs = []
    real = check.check_kernels
    monkeypatch.setattr(check, "check_kernels", lambda k: runs.append(k) or real(k))
    kernels.reset()
    assert kernels.load() is not None and runs == []  # vouched for: not checked again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file was replaced
    kernels.reset()
    assert kernels.load() is not None and len(runs) == 1
    kernels.reset()
    assert kernels.load() is not None and len(runs) == 1  # the new file's pass is remembered in turn

    def failing(kernel):
        raise AssertionError("fused norm kernel disagrees with PyTorch")

    monkeypatch.setattr(check, "check_kernels", failing)
    path.with_suffix(".checked").unlink()
    kernels.reset()
    assert kernels.load() is None and not path.with_suffix(".checked").exists()


def test_switched_off_uses_pytorch_ops(monkeypatch):
    monkeypatch.setenv("MEDZOO_FUSED_KERNELS", "0")
    assert kernels.load() is None
    with _Ops() as seen:
        instance_norm_act(torch.randn(2, 4, 5, 6, 7), torch.ones(4), torch.zeros(4), 1e-5, 0.01)
    assert "native_batch_norm" in seen.ops


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_compiler_that_fails_means_pytorch_ops_and_one_warning(fresh_kernels, monkeypatch, tmp_path, caplog):
    log = tmp_path / "calls"
    broken = _script(tmp_path / "broken-c++", f'echo "$@" >> {log}\n[ "$1" = --version ] && echo broken 1.0 && exit 0\n'
                                              "echo 'no such flag' >&2\nexit 3\n")
    monkeypatch.setenv("CXX", str(broken))
    with caplog.at_level(logging.WARNING, logger="medzoo.kernels"):
        assert kernels.load() is None
        assert kernels.load() is None  # tried once, not on every call
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no such flag" in warnings[0].getMessage()
    left = [p.name for p in fresh_kernels.iterdir()]
    assert len(left) == 1 and left[0].endswith(".failed")  # a note of the failure, no half-written library
    builds = [line for line in log.read_text().splitlines() if "--version" not in line]
    assert len(builds) == 4  # as it is, without the vector-width hint, without OpenMP, without -march=native
    kernels.reset()  # a later process reads the note instead of compiling again
    assert kernels.load() is None
    assert len([line for line in log.read_text().splitlines() if "--version" not in line]) == 4
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    y = instance_norm_act(x, None, None, 1e-5, 0.01)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@needs_compiler
def test_a_compiler_without_openmp_still_builds_a_working_kernel(fresh_kernels, monkeypatch, tmp_path):
    real = kernels._compiler()
    no_openmp = _script(tmp_path / "no-openmp-c++",
                        'for a in "$@"; do [ "$a" = -fopenmp ] && echo "unsupported: -fopenmp" >&2 && exit 1; done\n'
                        f'exec {real} "$@"\n')
    monkeypatch.setenv("CXX", str(no_openmp))
    kernel = kernels.load()
    assert kernel is not None  # built without OpenMP threads, and it passed its check
    x = torch.randn(2, 4, 9, 8, 7).contiguous(memory_format=CL3).requires_grad_(True)
    y = instance_norm_act(x, None, None, 1e-5, 0.01)
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(F.instance_norm(x.detach()), 0.01),
                               atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "autocast"])
def test_the_first_load_may_happen_inside_inference_or_autocast(fresh_kernels, context):
    """The kernel is loaded by whichever forward pass needs it first: predict's (no grad, inference mode) or a
    training step's (bf16 autocast); its self-check must pass in each."""
    ctx = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
           "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[context]
    with ctx:
        y = instance_norm_act(torch.randn(2, 4, 5, 6, 7).contiguous(memory_format=CL3), None, None, 1e-5, 0.01)
    assert kernels.load() is not None and memory_format_of(y) == CL3


@needs_compiler
def test_a_kernel_that_fails_its_check_is_not_used(fresh_kernels, monkeypatch, caplog):
    import medzoo.kernels.check as check

    def wrong(kernel):
        raise RuntimeError("self-check failed: output off by 1")

    monkeypatch.setattr(check, "check_norm_act", wrong)
    with caplog.at_level(logging.WARNING, logger="medzoo.kernels"):
        assert kernels.load() is None
    assert "self-check failed" in caplog.text


def test_no_compiler_means_pytorch_ops(fresh_kernels, monkeypatch):
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    assert kernels.load() is None


@needs_compiler
@pytest.mark.parametrize("shape, layout", [
    ((1, 5, 6, 7, 4), CL3), ((3, 5, 6, 7, 4), CL3), ((3, 5, 6, 7, 4), torch.contiguous_format),
    ((2, 4, 9, 7), CL2), ((2, 3, 17), torch.contiguous_format),
    ((2, 3, 17, 19, 23), CL3), ((2, 3, 17, 19, 23), torch.contiguous_format),  # past the kernel's sum blocks
    ((2, 1, 6, 5, 4), CL3),  # one channel: both layouts are the same memory
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slope, affine", [(0.01, True), (None, True), (-0.2, True), (0.0, True), (0.01, False)])
def test_kernel_matches_float64_instance_norm(shape, layout, dtype, slope, affine):
    assert kernels.load() is not None
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    w = (torch.rand(c, generator=gen) + 0.5).requires_grad_(True) if affine else None
    b = torch.randn(c, generator=gen).requires_grad_(True) if affine else None
    x = (torch.randn(*shape, generator=gen) * 3 + 1).to(dtype).contiguous(memory_format=layout).requires_grad_(True)
    grad = torch.randn(*shape, generator=gen).to(dtype)
    y = instance_norm_act(x, w, b, 1e-5, slope)
    y.backward(grad)
    assert y.dtype == dtype and memory_format_of(y) == memory_format_of(x) and y._base is None
    want = _reference(x, w, b, slope, grad)
    got = [y] + [t.grad for t in (x, w, b) if t is not None]
    assert x.grad.dtype == dtype and all(t.grad.dtype == torch.float32 for t in (w, b) if t is not None)
    # bf16: the map is stored in 8 bits, the parameter gradients are summed in fp32 (then double) regardless
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.03, "rtol": 0.02}
    for name, g, r in zip(("output", "input grad", "weight grad", "bias grad"), got, want):
        scale = r.abs().max().item()
        assert (g.double() - r).abs().max().item() <= tol["atol"] * max(scale, 1.0) + tol["rtol"] * scale, name


@needs_compiler
def test_kernel_under_autocast_gives_fp32_parameter_gradients():
    """As ``medzoo train`` runs it on a bf16 CPU: a conv's bf16 output, fp32 norm parameters."""
    assert kernels.load() is not None
    conv = torch.nn.Conv3d(2, 6, 3, padding=1).to(memory_format=CL3)
    w, b = torch.ones(6, requires_grad=True), torch.zeros(6, requires_grad=True)
    x = torch.randn(2, 2, 7, 6, 5).contiguous(memory_format=CL3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = instance_norm_act(h, w, b, 1e-5, 0.01)
    assert h.dtype == y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert w.grad.dtype == b.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()
    assert w.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0


@needs_compiler
def test_kernel_gives_the_same_result_with_one_or_two_threads():
    assert kernels.load() is not None
    x = torch.randn(2, 8, 20, 21, 22).contiguous(memory_format=CL3).requires_grad_(True)
    grad = torch.randn_like(x)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x.grad = None
            y = instance_norm_act(x, None, None, 1e-5, 0.01)
            y.backward(grad)
            results.append((y.detach(), x.grad.clone()))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDZOO_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels.cache_dir() == tmp_path / "medzoo" / "kernels"
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", os.fspath(tmp_path / "here"))
    assert kernels.cache_dir() == tmp_path / "here"


@needs_compiler
@pytest.mark.parametrize("shape, layout", [((1, 8, 9, 7, 6), CL3), ((2, 8, 9, 7, 6), torch.contiguous_format),
                                           ((2, 6, 9, 13), CL2), ((2, 8, 17, 19, 23), CL3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2, "C"])
@pytest.mark.parametrize("act", [None, "relu", "leakyrelu"])
def test_group_norm_kernel_matches_float64_group_norm(shape, layout, dtype, groups, act):
    from medzoo.models.layers.factories import make_act
    from medzoo.models.layers.norm import GroupNorm, norm_act

    assert kernels.load() is not None
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    groups = c if groups == "C" else groups
    norm = GroupNorm(groups, c)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen)
        norm.bias.normal_(generator=gen)
    x = (torch.randn(*shape, generator=gen) * 3 + 1).to(dtype).contiguous(memory_format=layout).requires_grad_(True)
    grad = torch.randn(*shape, generator=gen).to(dtype)
    module = make_act(act) if act else None
    with _Ops() as seen:
        y = norm(x) if module is None else norm_act(norm, module, x)
    assert "native_group_norm" not in seen.ops and y.dtype == dtype and memory_format_of(y) == memory_format_of(x)
    y.backward(grad)
    xd = x.detach().double().requires_grad_(True)
    wd, bd = (p.detach().double().requires_grad_(True) for p in (norm.weight, norm.bias))
    ref = F.group_norm(xd, groups, wd, bd, norm.eps)
    ref = {None: ref, "relu": F.relu(ref), "leakyrelu": F.leaky_relu(ref, 0.01)}[act]
    ref.backward(grad.double())
    tol = 1e-5 if dtype == torch.float32 else 0.01
    for name, got, want in (("output", y, ref), ("input grad", x.grad, xd.grad), ("weight grad", norm.weight.grad, wd.grad),
                            ("bias grad", norm.bias.grad, bd.grad)):
        scale = want.abs().max().item()
        assert (got.double() - want).abs().max().item() <= tol * max(scale, 1.0), name


@needs_compiler
def test_changing_the_weight_in_place_before_backward_is_an_error_as_in_pytorch():
    assert kernels.load() is not None
    w, b = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    y = instance_norm_act(torch.randn(2, 4, 5, 6, 7, requires_grad=True), w, b, 1e-5, 0.01)
    with torch.no_grad():
        w.mul_(2.0)  # e.g. an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@needs_compiler
def test_an_unwritable_cache_falls_back_to_a_temp_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(blocker / "kernels"))
    monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    kernels.reset()
    try:
        kernel = kernels.load()
        assert kernel is not None and kernel.path.parent.parent == tmp_path / "tmp"
    finally:
        kernels.reset()
