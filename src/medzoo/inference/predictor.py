"""The predictor: a run folder (plan + weights) in, label maps on each scan's own grid out.

:class:`Predictor` repeats the plan's preprocessing (crop to non-zero, normalise, resample), runs the
memory-bounded sliding window (:func:`~medzoo.inference.sliding_window.sliding_window_argmax`), maps the
labels back onto the scan's grid with :meth:`Preprocessor.restore` (so the output always has the input's
exact shape and affine) and applies optional post-processing. 2D plans are run slice by slice along
``plan.slice_axis`` with ``plan.context_slices`` neighbours on each side stacked as channels.

:func:`predict` does it for a file or a folder: cases are read by a prefetching thread, predicted on the
main thread and written (atomically) by a writer thread, so reading, computing and writing overlap. A case
that fails is listed in the :class:`PredictionReport` and the others still run.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo import runtime
from medzoo.errors import ConfigError, DataError, MedzooError, VolumeError
from medzoo.inference.postprocess import PostProcess
from medzoo.inference.sliding_window import sliding_window_argmax
from medzoo.io.volume import Volume
from medzoo.models.registry import prefers_channels_last
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)

__all__ = ["PredictionReport", "Predictor", "collect_cases", "predict"]

#: nnU-Net style channel files: ``case_0000.nii.gz``, ``case_0001.nii.gz``, ...
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class PredictionReport:
    """What :func:`predict` did.

    Attributes:
        written: label-map files written, in case order.
        failed: ``(case name, one-line reason)`` for every case that could not be predicted.
        probabilities: probability files written (with ``save_probabilities``).
        seconds: wall-clock time of the whole run.
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    probabilities: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every case was predicted."""
        return not self.failed


class Predictor:
    """Predict label maps with a trained network and the plan it was trained with.

    Args:
        model: the network (eval mode) or any callable mapping (N, C, *P) tensors to (N, K, *P) (e.g. an
            ONNX Runtime session wrapper); a ``card`` attribute with ``valid_size`` is honoured.
        plan: the run's :class:`~medzoo.planning.plan.Plan` (preprocessing, patch size, labels).
        device: where the network runs ("cpu", "cuda", ...). Default: the model's own device.
        mirror_axes: spatial axes for mirroring test-time augmentation (None: off).
        overlap: window overlap in [0, 1).
        batch_size: windows (or, for 2D plans, slices' windows) per forward pass.
        blend: "gaussian" or "constant".
        postprocess: a :class:`PostProcess` (or any callable on a (*S) label map) run on the final map.
        progress: show a progress bar over window batches.
        slices_per_step: 2D plans: slices predicted together in one sliding-window call.
        skip_empty: skip windows whose preprocessed input is zero in every channel (their voxels are
            labelled background; labels where the input is non-zero are unchanged). None (default): on
            when the plan crops to the non-zero region (which already declares the air background).
        amp: autocast precision of a PyTorch network (see :func:`inference_amp_dtype`): "auto" (default:
            bf16, else fp16, on a GPU; bf16 on a CPU with native bf16, else fp32), "bf16", "fp16" or "none"
            (fp32).
        memory_format: memory layout of a PyTorch network's weights (its windows follow): "auto" (default:
            channels-last on the CPU when the plan's model card says so, as ``medzoo train`` does; see
            :func:`medzoo.runtime.preferred_memory_format`), "channels_last" or "contiguous". The layout changes
            the convolutions' summation order, so logits move by float rounding (about 1e-5 of their
            range) and a label can flip only at a near-tie. Exported networks keep their runtime's layout.

    Building one calls :func:`medzoo.runtime.tune_malloc` (as ``predict`` and ``train`` do; off with
    ``MEDZOO_TUNE_MALLOC=0``): with glibc's defaults PyTorch page-faults each window's activations back in,
    and predicting the 160x192x160 phantom took 1.3x as long (5.2-5.6 s against 3.8-4.3 s).
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        plan: Plan,
        *,
        device: str | torch.device | None = None,
        mirror_axes: Sequence[int] | None = None,
        overlap: float = 0.5,
        batch_size: int = 4,
        blend: str = "gaussian",
        postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        progress: bool = False,
        slices_per_step: int = 32,
        skip_empty: bool | None = None,
        amp: str = "auto",
        memory_format: str = "auto",
    ) -> None:
        from medzoo.transforms.preprocess import Preprocessor

        runtime.tune_malloc()
        self.plan = plan
        self.model = model
        if device is not None and isinstance(model, torch.nn.Module):
            model.to(device)
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else None
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.blend = blend
        self.postprocess = postprocess
        self.progress = progress
        self.slices_per_step = max(1, int(slices_per_step))
        self.skip_empty = bool(plan.crop_to_nonzero) if skip_empty is None else bool(skip_empty)
        self.amp_dtype = inference_amp_dtype(amp, self.device, model)
        self.memory_format = inference_memory_format(memory_format, plan, self.device, model)
        if isinstance(model, torch.nn.Module) and (self.memory_format or memory_format == "contiguous"):
            # an explicit "contiguous" also converts back a network that is in channels-last already
            model.to(memory_format=self.memory_format or torch.contiguous_format)
        self.preprocessor = Preprocessor(plan)
        if plan.spatial_dims not in (2, 3):
            raise ConfigError(f"plan.spatial_dims must be 2 or 3, got {plan.spatial_dims}")

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        checkpoint: str = "best",
        device: str | torch.device | None = None,
        mirror_axes: Sequence[int] | None = None,
        overlap: float = 0.5,
        batch_size: int = 4,
        postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        **options: Any,
    ) -> Predictor:
        """Build a predictor from a run folder alone (``plan.json`` + ``checkpoint_<best|last>.pt``).

        Args:
            run_dir: the training run folder.
            checkpoint: "best", "last" or a checkpoint file name/path.
            device: "cpu", "cuda", ... (default: cuda when available, else cpu).
            mirror_axes, overlap, batch_size, postprocess, **options: see :class:`Predictor`.
        """
        from medzoo.engine.checkpoint import load_model_from_run

        device = torch.device(device) if device is not None else _default_device()
        model, plan = load_model_from_run(run_dir, which=checkpoint, device=device)
        return cls(
            model, plan, device=device, mirror_axes=mirror_axes, overlap=overlap, batch_size=batch_size,
            postprocess=postprocess, **options,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------- predicting
    @property
    def num_modalities(self) -> int:
        """Channels a scan must have (the network's inputs divided by the 2D context stack)."""
        return self.plan.in_channels // (2 * self.plan.context_slices + 1 if self.plan.spatial_dims == 2 else 1)

    def predict_volume(self, image: Volume) -> Volume:
        """Label map of one scan.

        Args:
            image: (C, I, J, K) scan (C = the plan's modalities), any dtype and geometry.

        Returns:
            uint8 Volume (1, I, J, K) (int16 if more than 256 classes) with ``image``'s exact shape and affine.
        """
        labels, _ = self.predict_case(image, probabilities=False)
        return labels

    def predict_probabilities(self, image: Volume) -> Volume:
        """Class probabilities of one scan: float16 Volume (K, I, J, K) on ``image``'s grid."""
        _, probs = self.predict_case(image, probabilities=True)
        assert probs is not None
        return probs

    def predict_case(self, image: Volume, probabilities: bool = False) -> tuple[Volume, Volume | None]:
        """Labels (and optionally probabilities) of one scan; see :meth:`predict_volume`.

        The probabilities are the softmax of the blended logits, mapped back linearly; the labels are the
        argmax on the network's grid mapped back with nearest neighbour (so when the plan resamples, the
        argmax of the returned probabilities can differ from the labels at a few boundary voxels).
        """
        self._check_input(image)
        pre = self.preprocessor.apply(image)
        x = torch.from_numpy(pre.image)
        labels, probs = self._run_network(x, probabilities)
        labels_np = labels.numpy()
        del x, labels
        restored = self.preprocessor.restore(labels_np, pre.meta, is_label=True)
        if self.postprocess is not None:
            restored = self.postprocess(restored)
        dtype = np.uint8 if self.plan.num_classes <= 256 else np.int16
        label_volume = Volume(np.ascontiguousarray(restored, dtype=dtype)[None], image.affine.copy(), {})
        prob_volume = None
        if probs is not None:
            back = self.preprocessor.restore(probs.float().numpy(), pre.meta, is_label=False)
            prob_volume = Volume(np.asarray(back, dtype=np.float16), image.affine.copy(), {})
        return label_volume, prob_volume

    def _check_input(self, image: Volume) -> None:
        where = image.meta.get("path", "input scan")
        dims = image.spatial_dims
        if self.plan.spatial_dims == 3 and (dims == 2 or 1 in image.spatial_shape):
            raise VolumeError(
                where, f"is a 2D image (spatial shape {image.spatial_shape}) but model '{self.plan.model}' "
                "is a 3D network; give it a 3D scan"
            )
        if image.num_channels != self.num_modalities:
            names = ", ".join(self.plan.modalities) if self.plan.modalities else "?"
            raise DataError(
                f"{where}: the scan has {image.num_channels} channel(s) but the model was trained on "
                f"{self.num_modalities} modalit{'y' if self.num_modalities == 1 else 'ies'} ({names}); "
                "give a 4D file with that many channels or one file per modality (case_0000, case_0001, ...)"
            )

    def _sliding(self, x: torch.Tensor, probabilities: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, *S) on CPU -> labels (B, *S) uint8 and float16 probabilities (B, K, *S) on CPU."""
        x = x.to(self.device) if self.device.type != "cpu" else x
        dtype = self.amp_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            labels, probs = sliding_window_argmax(
                x, self.model, self.plan.patch_size, overlap=self.overlap, blend=self.blend,
                batch_size=self.batch_size, mirror_axes=self.mirror_axes, return_probabilities=probabilities,
                progress=self.progress, device=self.device, skip_empty=self.skip_empty,
            )  # fmt: skip
        return labels.cpu(), None if probs is None else probs.cpu()

    def _run_network(self, x: torch.Tensor, probabilities: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed (C, *S') -> labels (*S') uint8 and probabilities (K, *S') float16 or None."""
        if self.plan.spatial_dims == 3 or x.ndim == 3:  # a 3D net, or a 2D net on a 2D image
            labels, probs = self._sliding(x[None], probabilities)
            return labels[0], None if probs is None else probs[0]
        return self._run_slices(x, probabilities)

    def _run_slices(self, x: torch.Tensor, probabilities: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """2D network over a 3D scan: slice by slice along ``plan.slice_axis``, context slices as channels."""
        axis = self.plan.slice_axis
        ctx = self.plan.context_slices
        vol = x.movedim(axis + 1, 1)  # (C, N, *in-plane)
        channels, n = vol.shape[0], vol.shape[1]
        labels = torch.empty((n, *vol.shape[2:]), dtype=torch.uint8)
        probs = None
        for start in range(0, n, self.slices_per_step):
            stop = min(start + self.slices_per_step, n)
            stack = context_stack(vol, range(start, stop), ctx)  # (B, C*(2ctx+1), *in-plane)
            lab, pr = self._sliding(stack, probabilities)
            labels[start:stop] = lab
            if pr is not None:
                if probs is None:
                    probs = torch.empty((pr.shape[1], n, *vol.shape[2:]), dtype=torch.float16)
                probs[:, start:stop] = pr.movedim(0, 1)
        del channels
        labels = labels.movedim(0, axis)
        if probs is not None:
            probs = probs.movedim(1, axis + 1)
        return labels, probs


def inference_amp_dtype(amp: str, device: torch.device, model: Any) -> torch.dtype | None:
    """Autocast dtype of the network during prediction (None: fp32): :func:`medzoo.runtime.autocast_dtype`,
    the rule training follows too (the blending, softmax and argmax stay fp32). A network that is not a
    PyTorch module (an ONNX Runtime or OpenVINO export) always runs as exported, in fp32.

    Raises:
        ConfigError: ``amp`` is not one of "auto", "bf16", "fp16", "none".
    """
    if amp not in runtime.AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(runtime.AMP_MODES)}, got '{amp}'")
    if not isinstance(model, torch.nn.Module):
        if amp not in ("auto", "none"):
            log.warning("amp %s applies to the torch backend; the exported network runs in fp32", amp)
        return None
    return runtime.autocast_dtype(amp, device, "predicting")


def inference_memory_format(
    memory_format: str, plan: Plan, device: torch.device, model: Any
) -> torch.memory_format | None:
    """Memory layout a PyTorch network predicts in (None: PyTorch's default; a network already in
    channels-last is converted back only when ``memory_format`` is "contiguous").

    Raises:
        ConfigError: ``memory_format`` is not one of "auto", "channels_last", "contiguous".
    """
    if memory_format not in runtime.MEMORY_FORMATS:
        raise ConfigError(f"memory_format must be one of {', '.join(runtime.MEMORY_FORMATS)}, got '{memory_format}'")
    if not isinstance(model, torch.nn.Module):
        if memory_format != "auto":
            log.warning("memory_format %s applies to the torch backend; the export keeps its runtime's layout",
                        memory_format)
        return None
    return runtime.preferred_memory_format(memory_format, plan.spatial_dims, device,
                                           prefers_channels_last(plan.model))


def context_stack(vol: torch.Tensor, indices: range | Sequence[int], context: int) -> torch.Tensor:
    """2D network inputs for slices ``indices`` of ``vol`` with ``context`` neighbours on each side.

    Args:
        vol: (C, N, *in-plane) — the sliced axis second.
        indices: the slices to build.
        context: neighbouring slices on each side; beyond the volume the edge slice is repeated.

    Returns:
        (len(indices), C * (2 * context + 1), *in-plane): channel-major, i.e. for each modality its slices
        ``i - context .. i + context`` in order (the same order as the training patch loader).
    """
    n = vol.shape[1]
    offsets = torch.arange(-context, context + 1)
    idx = (torch.as_tensor(list(indices))[:, None] + offsets[None]).clamp_(0, n - 1)  # (B, 2ctx+1)
    out = vol[:, idx]  # (C, B, 2ctx+1, *in-plane)
    out = out.movedim(1, 0)  # (B, C, 2ctx+1, *in-plane)
    return out.reshape(out.shape[0], -1, *vol.shape[2:]).contiguous()


def _device_of(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device(getattr(model, "device", "cpu"))


def _default_device() -> torch.device:
    return runtime.resolve_device(None)


# ------------------------------------------------------------------------------------------- files in/out
@dataclass
class _InputCase:
    name: str  # case name (for messages)
    paths: list[Path]  # one file, or one per channel
    output_name: str  # label file name


def collect_cases(input_path: str | Path) -> list[_InputCase]:
    """The cases of a file or a folder.

    A folder's image files (NIfTI, Analyze, NRRD, MetaImage) are one case each, except nnU-Net style
    channel files ``NAME_0000.ext``, ``NAME_0001.ext``, ... which are grouped into case ``NAME`` (channels
    in index order). Output names: the input's file name, or for channel files ``NAME`` + the extension.
    """
    from medzoo.io.readers import is_volume_file, volume_suffix

    path = Path(input_path)
    if path.is_file():
        if not is_volume_file(path):
            raise VolumeError(path, "unsupported file type (give a .nii/.nii.gz/.nrrd/.mha/.mhd/.hdr file)")
        return [_InputCase(_stem(path), [path], path.name)]
    if not path.is_dir():
        raise VolumeError(path, "input not found")
    files = sorted(p for p in path.iterdir() if p.is_file() and is_volume_file(p) and not p.name.startswith("."))
    # Analyze pairs: keep the header only.
    headers = {p.with_suffix(".hdr") for p in files if p.suffix.lower() == ".hdr"}
    files = [p for p in files if not (p.suffix.lower() == ".img" and p.with_suffix(".hdr") in headers)]
    if not files:
        raise VolumeError(path, "no image files in this folder")
    groups: dict[str, list[tuple[int, Path]]] = {}
    singles: list[_InputCase] = []
    for p in files:
        match = _CHANNEL_FILE.match(_stem(p))
        if match:
            groups.setdefault(match["case"], []).append((int(match["channel"]), p))
        else:
            singles.append(_InputCase(_stem(p), [p], p.name))
    cases = list(singles)
    for name, members in groups.items():
        members.sort()
        cases.append(_InputCase(name, [p for _, p in members], name + volume_suffix(members[0][1])))
    cases.sort(key=lambda c: c.name)
    return cases


def collect_layout_cases(root: str | Path, layout: str | None = None, **options: Any) -> list[_InputCase]:
    """The cases of a dataset folder read through a layout (``msd``, ``brats``, ``iseg``, ...).

    The layout's unlabelled (test) cases when it lists any, else all its cases; each case's modality files
    become its channels in the layout's order. Output names: ``<case id>`` + the first image's extension
    (``.nii.gz`` for Analyze, which cannot hold every affine). ``options`` go to the layout.
    """
    from medzoo.data.layouts import load_dataset
    from medzoo.io.readers import volume_suffix

    info = load_dataset(root, layout=None if layout in (None, "auto") else layout, **options)
    chosen = info.test_cases or info.cases
    if not chosen:
        raise DataError(f"{root}: the {info.layout} layout found no cases to predict")
    cases = []
    for case in chosen:
        suffix = volume_suffix(case.image_paths[0])
        suffix = ".nii.gz" if suffix.lower() in (".hdr", ".img", "") else suffix
        cases.append(_InputCase(case.case_id, list(case.image_paths), case.case_id + suffix))
    log.info("%s: predicting %d %s of the %s layout", root, len(cases),
             "test case(s)" if info.test_cases else "case(s)", info.layout)
    return cases


def _stem(path: Path) -> str:
    from medzoo.io.readers import volume_suffix

    suffix = volume_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.stem


def read_case(case: _InputCase) -> Volume:
    """Read a case's file(s); channel files are stacked (they must share one grid)."""
    from medzoo.io.readers import read_volume

    if len(case.paths) == 1:
        return read_volume(case.paths[0])
    volumes = [read_volume(p) for p in case.paths]
    first = volumes[0]
    for p, v in zip(case.paths[1:], volumes[1:]):
        if v.num_channels != 1:
            raise DataError(f"case {case.name}: channel file {p.name} holds {v.num_channels} channels, expected 1")
        if v.spatial_shape != first.spatial_shape or not np.allclose(v.affine, first.affine, atol=1e-3):
            raise DataError(
                f"case {case.name}: channel file {p.name} is not on the grid of {case.paths[0].name} "
                f"(shape {v.spatial_shape} vs {first.spatial_shape}); resample it first"
            )
    array = np.concatenate([v.array.astype(np.float32, copy=False) for v in volumes], axis=0)
    return Volume(array, first.affine, {"path": str(case.paths[0])})


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    checkpoint: str = "best",
    device: str | None = None,
    tta: bool = False,
    mirror_axes: Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    save_probabilities: bool = False,
    keep_largest: bool = False,
    fill_holes: bool = False,
    min_size: int = 0,
    backend: str = "auto",
    progress: bool = True,
    layout: str | None = None,
    layout_options: dict[str, Any] | None = None,
    amp: str = "auto",
    memory_format: str = "auto",
) -> PredictionReport:
    """Predict every scan of a file or folder with a trained run (or an exported model).

    Args:
        run_dir: a run folder (plan.json + checkpoints), or an exported ``.onnx`` file (its JSON card beside
            it) for the ``onnxruntime`` / ``openvino`` backends.
        input_path: one image file, or a folder of them (4D multi-modal files or nnU-Net channel files).
        output_dir: where label maps go (same file names; channel files give ``case`` + extension).
        checkpoint: "best" or "last" (run folders, any backend: the export is made from this checkpoint).
        device: "cpu" / "cuda" (default: cuda if available).
        tta: mirroring test-time augmentation over every spatial axis (``mirror_axes`` picks axes).
        overlap, batch_size: sliding-window settings.
        save_probabilities: also write ``<case>_probabilities.npz`` (float16 (K, *S) + affine).
        keep_largest, fill_holes, min_size: post-processing (see :class:`PostProcess`).
        backend: "auto" (default): on the CPU the faster of OpenVINO (fp32, through an export cached in the
            run folder and checked against PyTorch) and PyTorch (in the precision ``amp`` gives it: bf16 on a
            CPU with native bf16), timed once per checkpoint; PyTorch on a GPU, without OpenVINO, when the
            network does not export or check, and when ``amp`` is "bf16". "torch", "onnxruntime" or
            "openvino" force one (see :func:`medzoo.inference.backends.load_backend`).
        progress: tqdm bar over cases.
        layout: read ``input_path`` as a dataset folder in this layout (``"auto"`` detects it) and predict
            its test cases (all cases when it lists none), see :func:`collect_layout_cases`.
        layout_options: options of that layout.
        amp: autocast precision of a PyTorch network: "auto" (bf16, else fp16, on a GPU; bf16 on a CPU with
            native bf16, else fp32), "bf16", "fp16" or "none" (fp32: labels equal to an fp32 prediction up to
            near-ties, whichever runtime wins; see :func:`inference_amp_dtype`).
        memory_format: layout of a PyTorch network: "auto" (channels-last on the CPU where the model's card
            says so), "channels_last" or "contiguous" (see :class:`Predictor`).

    Returns:
        A :class:`PredictionReport`; failures are listed there (and logged), the other cases still run.
    """
    from medzoo.inference.backends import load_backend

    started = time.perf_counter()
    runtime.tune_malloc()  # reuse freed buffers across windows and cases
    output_dir = Path(output_dir)
    if layout or layout_options:
        cases = collect_layout_cases(input_path, layout, **(layout_options or {}))
    else:
        cases = collect_cases(input_path)
    if backend == "auto" and amp == "bf16" and Path(run_dir).is_dir():
        backend = "torch"  # the user asked for bf16, which only PyTorch runs (exports run in fp32)
        log.info("amp bf16: predicting with PyTorch")
    model, plan = load_backend(run_dir, backend=backend, checkpoint=checkpoint, device=device,
                               batch_size=batch_size, amp=amp)
    dims = plan.spatial_dims if plan.spatial_dims == 3 else 2
    axes = tuple(mirror_axes) if mirror_axes else (tuple(range(dims)) if tta else None)
    post = PostProcess(keep_largest=keep_largest, fill_holes=fill_holes, min_size=min_size)
    predictor = Predictor(
        model, plan, device=device if device is not None else _device_of(model), mirror_axes=axes,
        overlap=overlap, batch_size=batch_size, postprocess=post if post.active else None, amp=amp,
        memory_format=memory_format,
    )  # fmt: skip
    inputs = {p.resolve() for c in cases for p in c.paths}
    for c in cases:
        if (output_dir / c.output_name).resolve() in inputs:
            raise ConfigError(f"{output_dir / c.output_name}: the output would overwrite the input; pick another --output")
    report = PredictionReport()
    _run_pipeline(predictor, cases, output_dir, save_probabilities, report, progress)
    report.seconds = time.perf_counter() - started
    log.debug(  # the CLI prints this summary itself
        "predicted %d/%d case(s) into %s in %.1f s", len(report.written), len(cases), output_dir, report.seconds
    )
    return report


_DONE = object()


def _run_pipeline(
    predictor: Predictor,
    cases: list[_InputCase],
    output_dir: Path,
    save_probabilities: bool,
    report: PredictionReport,
    progress: bool,
) -> None:
    """Reader thread -> compute (this thread) -> writer thread, with bounded queues."""
    from tqdm.auto import tqdm

    from medzoo.io.readers import write_volume
    from medzoo.utils import atomic_write

    read_q: queue.Queue = queue.Queue(maxsize=1)
    write_q: queue.Queue = queue.Queue(maxsize=2)
    lock = threading.Lock()
    stop = threading.Event()

    def fail(case: _InputCase, err: BaseException) -> None:
        message = str(err) if isinstance(err, (MedzooError, OSError)) else f"{type(err).__name__}: {err}"
        if not isinstance(err, (MedzooError, OSError)):
            log.debug("case %s failed", case.name, exc_info=err)
        with lock:
            report.failed.append((case.name, message))
        log.error("%s: %s", case.name, message)

    def reader() -> None:
        for case in cases:
            if stop.is_set():
                break
            try:
                item: Any = read_case(case)
            except Exception as err:  # noqa: BLE001 - every failure is reported per case
                item = err
            read_q.put((case, item))
        read_q.put(_DONE)

    def writer() -> None:
        while True:
            job = write_q.get()
            if job is _DONE:
                return
            case, labels, probs = job
            try:
                out = write_volume(labels, output_dir / case.output_name)
                with lock:
                    report.written.append(out)
                if probs is not None:
                    path = output_dir / f"{case.name}_probabilities.npz"
                    atomic_write(
                        path,
                        lambda tmp, p=probs: _save_npz(tmp, p),
                    )
                    with lock:
                        report.probabilities.append(path)
            except Exception as err:  # noqa: BLE001
                fail(case, err)

    output_dir.mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    bar = tqdm(total=len(cases), desc="predict", unit="case", disable=not progress)
    try:
        while True:
            item = read_q.get()
            if item is _DONE:
                break
            case, image = item
            if isinstance(image, BaseException):
                fail(case, image)
            else:
                try:
                    labels, probs = predictor.predict_case(image, probabilities=save_probabilities)
                    del image
                    write_q.put((case, labels, probs))
                except Exception as err:  # noqa: BLE001
                    fail(case, err)
            bar.update(1)
    finally:
        stop.set()
        # drain the reader so it can finish, then stop the writer after the queued writes
        while threads[0].is_alive():
            try:
                read_q.get(timeout=0.1)
            except queue.Empty:
                pass
        write_q.put(_DONE)
        threads[1].join()
        bar.close()
    order = {c.output_name: i for i, c in enumerate(cases)}
    report.written.sort(key=lambda p: order.get(p.name, 0))
    report.failed.sort(key=lambda f: f[0])


def _save_npz(tmp: Path, probs: Volume) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, probabilities=probs.array.astype(np.float16, copy=False), affine=probs.affine)
