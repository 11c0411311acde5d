"""medzoo.accel.kernels: the fused norm + activation and concatenation kernels (built with
torch.utils.cpp_extension on first use, checked, cached), and the fallback to PyTorch's ops when they cannot be
built, fail their check or are switched off."""

from __future__ import annotations

import logging
import os
import shutil
import stat

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from medzoo import runtime
from medzoo.accel import kernels
from medzoo.accel.norm import instance_norm_act, memory_format_of

CL3, CL2 = torch.channels_last_3d, torch.channels_last
needs_compiler = pytest.mark.skipif(kernels.compiler(os.environ.get("CXX")) is None,
                                    reason="no C++ compiler on this machine")


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """An empty kernel cache and no kernel loaded yet; the process's kernel is loaded afresh afterwards."""
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.reset()
    yield tmp_path / "kernels"
    kernels.reset()


@pytest.fixture
def cached_kernels(monkeypatch, tmp_path):
    """A kernel cache holding this process's build (built now if need be), not yet checked; nothing loaded."""
    built = runtime.fused_kernels()
    if built is None:
        pytest.skip("medzoo's CPU kernels are unavailable here")
    folder = tmp_path / "kernels" / built.path.parent.name
    shutil.copytree(built.path.parent, folder)
    (folder / "checked").unlink()
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.reset()
    yield folder / built.path.name
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


def _no_build(*args, **kwargs):
    raise AssertionError("cpp_extension.load was called for a cached build")


@needs_compiler
def test_builds_once_into_the_cache_and_is_used(fresh_kernels, monkeypatch):
    kernel = runtime.fused_kernels()
    assert kernel is not None and kernel.path.parent.parent == fresh_kernels and kernel.path.exists()
    assert [p.name for p in fresh_kernels.iterdir()] == [kernel.path.parent.name]  # one build folder, nothing else
    assert (kernel.path.parent / "checked").exists()
    assert runtime.fused_kernels() is kernel  # loaded once per process
    kernels.reset()  # as a later process: the cached build is loaded, not built again
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", _no_build)
    assert runtime.fused_kernels().path == kernel.path
    x = torch.randn(2, 4, 5, 6, 7).contiguous(memory_format=CL3)
    with _Ops() as seen:
        y = instance_norm_act(x, torch.ones(4), torch.zeros(4), 1e-5, 0.01)
    assert "native_batch_norm" not in seen.ops and memory_format_of(y) == CL3


def test_a_passed_check_is_remembered(cached_kernels, monkeypatch):
    """Later processes skip the self-check of the library that passed it."""
    from medzoo.accel import check

    runs = []
    real = check.check_kernels
    monkeypatch.setattr(check, "check_kernels", lambda k: runs.append(k) or real(k))
    assert runtime.fused_kernels() is not None and len(runs) == 1 and (cached_kernels.parent / "checked").exists()
    kernels.reset()
    assert runtime.fused_kernels() is not None and len(runs) == 1  # vouched for: not checked again


@pytest.mark.parametrize("damage", ["truncated", "garbage", "replaced", "unloadable"])
def test_a_corrupt_cached_build_is_discarded_with_one_warning_and_rebuilt(cached_kernels, monkeypatch, caplog,
                                                                         damage):
    path = cached_kernels
    good = path.parent.parent.parent / "good.so"
    shutil.copyfile(path, good)
    (path.parent / "checked").write_text(kernels._check_stamp(path))  # as after a passed check (not loaded here:
    rebuilt = []  # damaging a loaded library in place would crash this process)

    def rebuild(folder, name):  # stands in for the compiler: puts a good library back
        rebuilt.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good, folder / f"{name}.so")
        return folder / f"{name}.so"

    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif damage == "replaced":
        path.write_bytes(path.read_bytes() + b"\0")
    else:
        monkeypatch.setattr(kernels, "CpuKernels", _unloadable_once(kernels.CpuKernels))
    monkeypatch.setattr(kernels, "_build", rebuild)
    with caplog.at_level(logging.WARNING, logger="medzoo.accel.kernels"):
        kernel = runtime.fused_kernels()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "discarding the cached kernel build" in warnings[0].getMessage()
    assert kernel is not None and rebuilt == [path.parent] and (path.parent / "checked").exists()
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(instance_norm_act(x, None, None, 1e-5, 0.01),
                               F.leaky_relu(F.instance_norm(x), 0.01), atol=1e-5, rtol=1e-5)


def _unloadable_once(cls):
    calls = []

    def make(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(f"{path}: invalid ELF header")
        return cls(path)

    return make


def test_switched_off_uses_pytorch_ops(monkeypatch):
    monkeypatch.setenv("MEDZOO_FUSED_KERNELS", "0")
    assert runtime.fused_kernels() is None
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
    with caplog.at_level(logging.WARNING, logger="medzoo.accel.kernels"):
        assert runtime.fused_kernels() is None
        assert runtime.fused_kernels() is None  # tried once, not on every call
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "medzoo.accel.kernels"]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    notes = [p for p in fresh_kernels.iterdir() if p.name.endswith(".failed")]
    assert len(notes) == 1 and not list(fresh_kernels.rglob("*.so"))  # a note of the failure, no library
    builds = [line for line in log.read_text().splitlines() if " -c " in line]
    assert len(builds) >= 4  # as it is, without the vector-width hint, without OpenMP, without -march=native
    kernels.reset()  # a later process reads the note instead of compiling again
    assert runtime.fused_kernels() is None
    assert len([line for line in log.read_text().splitlines() if " -c " in line]) == len(builds)
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    y = instance_norm_act(x, None, None, 1e-5, 0.01)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@needs_compiler
def test_a_compiler_without_openmp_still_builds_a_working_kernel(fresh_kernels, monkeypatch, tmp_path):
    real = kernels.compiler(os.environ.get("CXX"))
    no_openmp = _script(tmp_path / "no-openmp-c++",
                        'for a in "$@"; do [ "$a" = -fopenmp ] && echo "unsupported: -fopenmp" >&2 && exit 1; done\n'
                        f'exec {real} "$@"\n')
    monkeypatch.setenv("CXX", str(no_openmp))
    kernel = runtime.fused_kernels()
    assert kernel is not None  # built without OpenMP threads, and it passed its check
    x = torch.randn(2, 4, 9, 8, 7).contiguous(memory_format=CL3).requires_grad_(True)
    y = instance_norm_act(x, None, None, 1e-5, 0.01)
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(F.instance_norm(x.detach()), 0.01),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "autocast"])
def test_the_first_load_may_happen_inside_inference_or_autocast(cached_kernels, context):
    """The kernel is loaded by whichever forward pass needs it first: predict's (no grad, inference mode) or a
    training step's (bf16 autocast); its self-check must pass in each."""
    ctx = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
           "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[context]
    with ctx:
        y = instance_norm_act(torch.randn(2, 4, 5, 6, 7).contiguous(memory_format=CL3), None, None, 1e-5, 0.01)
    assert runtime.fused_kernels() is not None and memory_format_of(y) == CL3
    assert (cached_kernels.parent / "checked").exists()


def test_a_kernel_that_fails_its_check_is_not_used(cached_kernels, monkeypatch, caplog):
    import medzoo.accel.check as check

    def wrong(kernel):
        raise RuntimeError("self-check failed: output off by 1")

    monkeypatch.setattr(check, "check_norm_act", wrong)
    monkeypatch.setattr(kernels, "_build", lambda folder, name: cached_kernels)  # the rebuild fails alike
    with caplog.at_level(logging.WARNING, logger="medzoo.accel.kernels"):
        assert runtime.fused_kernels() is None
    assert "self-check failed" in caplog.text


def test_no_compiler_means_pytorch_ops(fresh_kernels, monkeypatch):
    monkeypatch.setattr(kernels, "compiler", lambda cxx: None)
    assert runtime.fused_kernels() is None


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
    assert runtime.fused_kernels() is not None
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
    assert runtime.fused_kernels() is not None
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
    assert runtime.fused_kernels() is not None
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
    assert runtime.kernel_cache_dir() == tmp_path / "medzoo" / "kernels"
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", os.fspath(tmp_path / "here"))
    assert runtime.kernel_cache_dir() == tmp_path / "here"


@needs_compiler
@pytest.mark.parametrize("shape, layout", [((1, 8, 9, 7, 6), CL3), ((2, 8, 9, 7, 6), torch.contiguous_format),
                                           ((2, 6, 9, 13), CL2), ((2, 8, 17, 19, 23), CL3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2, "C"])
@pytest.mark.parametrize("act", [None, "relu", "leakyrelu"])
def test_group_norm_kernel_matches_float64_group_norm(shape, layout, dtype, groups, act):
    from medzoo.accel.norm import GroupNorm, norm_act
    from medzoo.models.layers.factories import make_act

    assert runtime.fused_kernels() is not None
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
    assert runtime.fused_kernels() is not None
    w, b = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    y = instance_norm_act(torch.randn(2, 4, 5, 6, 7, requires_grad=True), w, b, 1e-5, 0.01)
    with torch.no_grad():
        w.mul_(2.0)  # e.g. an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_an_unwritable_cache_falls_back_to_a_temp_folder(cached_kernels, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(blocker / "kernels"))
    monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    fallback = tmp_path / "tmp" / f"medzoo-kernels-{os.getuid()}"
    shutil.copytree(cached_kernels.parent, fallback / cached_kernels.parent.name)  # a build there, not a new one
    kernels.reset()
    kernel = runtime.fused_kernels()
    assert kernel is not None and kernel.path.parent.parent == fallback
