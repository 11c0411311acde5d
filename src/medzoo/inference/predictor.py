"""The predictor: a trained network and its plan in, label maps (or probabilities) on each scan's own grid out.

Layers of prediction, each usable on its own:

- :class:`Predictor` (here): one volume in, its label map / probabilities out. In three steps, which
  ensembles can run separately: :meth:`Predictor.preprocess` (the plan's crop, normalisation and
  resampling), :meth:`Predictor.predict_preprocessed` (the memory-bounded sliding window on the preprocessed
  grid; 2D plans slice by slice with their context slices, as training stacks them) and
  :meth:`Predictor.restore` (probabilities and/or labels on the preprocessed grid -> the input's exact grid,
  plus optional post-processing).
- :mod:`medzoo.inference.inputs`: which cases a file, folder or dataset layout holds, and reading one.
- :mod:`medzoo.inference.pipeline`: the threaded read -> compute -> write loop over cases.
- :mod:`medzoo.inference.backends`: the runtimes (PyTorch, or an ONNX export under OpenVINO / ONNX Runtime).

:func:`predict` ties them together for a run folder (or an export) and a file or folder of scans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo import runtime
from medzoo.data.loader import slices_with_context
from medzoo.engine.config import OUTPUT_FORMATS
from medzoo.engine.distributed import resolve_device
from medzoo.errors import ConfigError, DataError, VolumeError
from medzoo.inference.inputs import InputCase, collect_cases, collect_layout_cases, read_case
from medzoo.inference.pipeline import PredictionReport, run_pipeline
from medzoo.inference.postprocess import PostProcess
from medzoo.inference.sliding_window import sliding_window_argmax
from medzoo.io.volume import Volume
from medzoo.models.registry import prefers_channels_last
from medzoo.planning.plan import Plan
from medzoo.transforms.preprocess import PreprocessedCase, Preprocessor

log = logging.getLogger(__name__)

__all__ = [
    "InputCase", "PredictOptions", "PredictionReport", "Predictor", "collect_cases", "collect_layout_cases",
    "predict", "read_case",
]



def _resampled(pre: PreprocessedCase) -> bool:
    """Whether preprocessing resampled the scan to another grid (the plan's spacing differs from its own)."""
    return "resample_from_shape" in pre.meta and list(pre.meta["resample_from_shape"]) != list(pre.meta["shape"])

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
            the convolutions' summation order, so logits move by float rounding and a label can flip only
            at a near-tie. Exported networks keep their runtime's layout.

    Building one calls :func:`medzoo.runtime.tune_malloc` (as ``predict`` and ``train`` do; off with
    ``MEDZOO_TUNE_MALLOC=0``): with glibc's defaults PyTorch page-faults each window's activations back in.
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
        runtime.tune_malloc()
        if plan.spatial_dims not in (2, 3):
            raise ConfigError(f"plan.spatial_dims must be 2 or 3, got {plan.spatial_dims}")
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
            run_dir: the training run folder, or a ``.medzoo`` file (see :func:`medzoo.packaging.open_model`).
            checkpoint: "best", "last" or a checkpoint file name/path.
            device: "cpu", "cuda", ... (default: cuda when available, else cpu).
            mirror_axes, overlap, batch_size, postprocess, **options: see :class:`Predictor`.
        """
        from medzoo.engine.checkpoint import load_model_from_run
        from medzoo.packaging import open_model

        device = torch.device(device) if device is not None else _default_device()
        model, plan = load_model_from_run(open_model(run_dir), which=checkpoint, device=device)
        return cls(
            model, plan, device=device, mirror_axes=mirror_axes, overlap=overlap, batch_size=batch_size,
            postprocess=postprocess, **options,
        )  # fmt: skip

    # ------------------------------------------------------------------------------- one volume, whole
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

        The probabilities are the softmax of the blended logits, mapped back linearly. When the plan
        resamples, the labels are the argmax of those probabilities on the input's grid
        (:meth:`Preprocessor.restore_labels`), else the argmax on the network's grid.
        """
        pre = self.preprocess(image)
        resampled = _resampled(pre)
        labels, probs = self.predict_preprocessed(pre.image, probabilities or resampled)
        return self.restore(image, pre, labels=labels, probabilities=probs, keep_probabilities=probabilities)

    # ----------------------------------------------------------------------------------- the three steps
    def preprocess(self, image: Volume) -> PreprocessedCase:
        """Check ``image`` against the plan and preprocess it (crop, normalise, resample) as training did."""
        self._check_input(image)
        return self.preprocessor.apply(image)

    def predict_preprocessed(
        self, image: np.ndarray | torch.Tensor, probabilities: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network over a preprocessed scan (C, *S'): labels (*S') uint8 and, when asked, float16
        probabilities (K, *S'), both on the CPU and on the preprocessed grid."""
        x = torch.as_tensor(image)
        regions = self.plan.regions is not None  # region labels are painted from the probabilities
        if self.plan.spatial_dims == 3 or x.ndim == 3:  # a 3D net, or a 2D net on a 2D image
            labels, probs = self._sliding(x[None], probabilities or regions)
            labels, probs = labels[0], None if probs is None else probs[0]
        else:
            labels, probs = self._run_slices(x, probabilities or regions)
        if regions:
            labels = self.labels_from_probabilities(probs)
            probs = probs if probabilities else None
        return labels, probs

    def labels_from_probabilities(self, probabilities: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(K, *S) probabilities -> (*S) labels: the argmax, or for a region plan each region above 0.5
        painting its label value in ``plan.regions_class_order`` (see
        :func:`medzoo.inference.ensemble.probabilities_to_labels`)."""
        if self.plan.regions is None:
            return torch.as_tensor(probabilities).argmax(0).to(torch.uint8 if self.plan.num_classes <= 256 else torch.int16)
        from medzoo.inference.ensemble import probabilities_to_labels

        probs = torch.as_tensor(probabilities).float().numpy()
        return torch.from_numpy(probabilities_to_labels(probs, self.plan.regions_class_order))

    def restore(
        self,
        image: Volume,
        pre: PreprocessedCase,
        *,
        labels: torch.Tensor | np.ndarray | None = None,
        probabilities: torch.Tensor | np.ndarray | None = None,
        keep_probabilities: bool = True,
    ) -> tuple[Volume, Volume | None]:
        """Map a prediction on the preprocessed grid back onto ``image``'s grid.

        Args:
            image: the scan as given (its shape and affine are the output's).
            pre: what :meth:`preprocess` made of it.
            labels: (*S') class indices; None: the argmax of ``probabilities`` (e.g. an ensemble's mean).
            probabilities: (K, *S') class probabilities, or None. When the plan resampled the scan, the labels
                are the argmax of these probabilities mapped back onto ``image``'s grid
                (:meth:`Preprocessor.restore_labels`), not ``labels`` mapped back with nearest neighbour.
            keep_probabilities: also map ``probabilities`` back and return them (False: they only decide the
                labels).

        Returns:
            ``(labels, probabilities)``: uint8 (int16 above 256 classes) Volume (1, I, J, K), post-processed,
            and float16 Volume (K, I, J, K) or None.
        """
        if probabilities is not None and _resampled(pre):  # probabilities, not labels, go back to the input grid
            probs = torch.as_tensor(probabilities).numpy()
            if self.plan.regions is None:
                restored = self.preprocessor.restore_labels(probs, pre.meta)
            else:
                back = self.preprocessor.restore(probs.astype(np.float32), pre.meta, is_label=False)
                restored = self.labels_from_probabilities(back).numpy()
        else:
            if labels is None:
                if probabilities is None:
                    raise ConfigError("restore needs labels or probabilities")
                labels = self.labels_from_probabilities(probabilities)
            labels_np = np.asarray(torch.as_tensor(labels).numpy())
            restored = self.preprocessor.restore(labels_np, pre.meta, is_label=True)
        if self.postprocess is not None:
            restored = self.postprocess(restored)
        top = max(self.plan.regions_class_order or [0]) if self.plan.regions else self.plan.num_classes - 1
        dtype = np.uint8 if top < 256 else np.int16
        label_volume = Volume(np.ascontiguousarray(restored, dtype=dtype)[None], image.affine.copy(), {})
        prob_volume = None
        if probabilities is not None and keep_probabilities:
            probs = torch.as_tensor(probabilities).float().numpy()
            back = self.preprocessor.restore(probs, pre.meta, is_label=False)
            meta = {"regions_class_order": list(self.plan.regions_class_order)} if self.plan.regions else {}
            prob_volume = Volume(np.asarray(back, dtype=np.float16), image.affine.copy(), meta)
        return label_volume, prob_volume

    # ------------------------------------------------------------------------------------------ internals
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
                activation="sigmoid" if self.plan.regions is not None else "softmax",
            )  # fmt: skip
        return labels.cpu(), None if probs is None else probs.cpu()

    def _run_slices(self, x: torch.Tensor, probabilities: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """2D network over a 3D scan: slice by slice along ``plan.slice_axis``, ``slices_per_step`` at a time,
        with the context slices stacked by :func:`medzoo.data.loader.slices_with_context` as in training
        (zeros beyond the volume)."""
        axis, ctx = self.plan.slice_axis, self.plan.context_slices
        n = x.shape[axis + 1]
        in_plane = [s for a, s in enumerate(x.shape[1:]) if a != axis]
        labels = torch.empty((n, *in_plane), dtype=torch.uint8)
        probs = None
        for start in range(0, n, self.slices_per_step):
            stop = min(start + self.slices_per_step, n)
            # the slices start..stop-1 need their neighbours within ctx; beyond the volume they are zeros
            lo, hi = max(0, start - ctx), min(n, stop + ctx)
            stack = slices_with_context(x.narrow(axis + 1, lo, hi - lo), axis, ctx)[start - lo : stop - lo]
            lab, pr = self._sliding(stack, probabilities)
            labels[start:stop] = lab
            if pr is not None:
                if probs is None:
                    probs = torch.empty((pr.shape[1], n, *in_plane), dtype=torch.float16)
                probs[:, start:stop] = pr.movedim(0, 1)
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


def _device_of(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device(getattr(model, "device", "cpu"))


def _default_device() -> torch.device:
    return runtime.resolve_device(None)


@dataclass
class PredictOptions:
    """How :func:`predict` runs; the fields are its keyword arguments (see there).

    Grouped so that callers building a prediction in steps (the CLI, ensembles, distributed runs) pass one
    object: ``predict(run, scans, out, options=PredictOptions(tta=True))``.
    """

    checkpoint: str = "best"
    device: str | None = None
    backend: str = "auto"
    amp: str = "auto"
    memory_format: str = "auto"
    # sliding window
    tta: bool = False
    mirror_axes: Sequence[int] | None = None
    overlap: float = 0.5
    batch_size: int = 4
    # outputs
    save_probabilities: bool = False
    keep_largest: bool = False
    fill_holes: bool = False
    min_size: int = 0
    chosen_postprocessing: bool = True
    progress: bool = True
    output_format: str = "image"
    skip_existing: bool = False
    # inputs
    layout: str | None = None
    layout_options: dict[str, Any] | None = field(default=None)

    def postprocess(self) -> PostProcess | None:
        """The post-processing these options ask for, or None."""
        post = PostProcess(keep_largest=self.keep_largest, fill_holes=self.fill_holes, min_size=self.min_size)
        return post if post.active else None

    def mirror_axes_for(self, plan: Plan) -> tuple[int, ...] | None:
        """Test-time mirroring axes: ``mirror_axes``, else with ``tta`` the axes the plan allows (every axis of
        the network's input, except one whose mirror image swaps a left/right pair of labels)."""
        if self.mirror_axes:
            return tuple(self.mirror_axes)
        return (plan.allowed_mirror_axes or None) if self.tta else None


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
    chosen_postprocessing: bool = True,
    output_format: str = "image",
    skip_existing: bool = False,
    options: PredictOptions | None = None,
) -> PredictionReport:
    """Predict every scan of a file or folder with a trained run (or an exported model).

    Args:
        run_dir: a run folder (plan.json + checkpoints), or an exported ``.onnx`` file (its JSON card beside
            it) for the ``onnxruntime`` / ``openvino`` backends; a cross-validation parent folder (its folds
            are averaged) or a list of runs (averaged), see :mod:`medzoo.inference.ensemble`.
        input_path: one image file, or a folder of them (4D multi-modal files or nnU-Net channel files).
        output_dir: where label maps go (same file names; channel files give ``case`` + extension).
        checkpoint: "best" or "last" (run folders, any backend: an export is made from this checkpoint).
        device: "cpu" / "cuda" (default: cuda if available).
        tta: mirroring test-time augmentation over every spatial axis (``mirror_axes`` picks axes).
        overlap, batch_size: sliding-window settings.
        save_probabilities: also write ``<case>_probabilities.npz`` (float16 (K, *S) + affine).
        keep_largest, fill_holes, min_size: post-processing (see :class:`PostProcess`).
        backend: "auto" (default: PyTorch for a run folder; an ``.onnx`` file under OpenVINO when installed,
            else ONNX Runtime), "torch", "onnxruntime" or "openvino" (see
            :func:`medzoo.inference.backends.load_backend`).
        progress: a progress bar over cases.
        layout: read ``input_path`` as a dataset folder in this layout (``"auto"`` detects it) and predict
            its test cases (all cases when it lists none), see :func:`collect_layout_cases`.
        layout_options: options of that layout.
        amp: autocast precision of a PyTorch network: "auto" (bf16, else fp16, on a GPU; bf16 on a CPU with
            native bf16, else fp32), "bf16", "fp16" or "none" (fp32; see :func:`inference_amp_dtype`).
        memory_format: layout of a PyTorch network: "auto" (channels-last on the CPU where the model's card
            says so), "channels_last" or "contiguous" (see :class:`Predictor`).
        chosen_postprocessing: apply the post-processing a cross-validation chose (``RUN/postprocessing.json``)
            when ``run_dir`` has one.
        output_format: "image" (default: label maps named and typed like the inputs, NIfTI for a DICOM
            series) or "dicom-seg" (a DICOM Segmentation object ``<case>.dcm`` over each input series, see
            :func:`medzoo.io.dicom_seg.write_dicom_seg`).
        skip_existing: keep the outputs that are there already and predict only the missing ones (a killed
            job rerun with the same command picks up where it stopped).
        options: all of the above in one :class:`PredictOptions`; when given, the keyword arguments are
            ignored.

    ``run_dir`` may also be a ``.medzoo`` file (see :func:`medzoo.packaging.open_model`). Under ``torchrun``
    each process predicts its share of the cases (:mod:`medzoo.inference.cohort`) and rank 0 returns the
    report of the whole job (the other ranks their own).

    Returns:
        A :class:`PredictionReport`; failures are listed there (and logged), the other cases still run.
    """
    if options is None:
        given = locals()
        options = PredictOptions(**{f.name: given[f.name] for f in fields(PredictOptions)})
    return run_prediction(run_dir, input_path, output_dir, options)


def run_prediction(
    run_dir: str | Path | Sequence[str | Path], input_path: str | Path, output_dir: str | Path,
    options: PredictOptions,
) -> PredictionReport:
    """:func:`predict` with its options in one object: find the cases, load the runtime, run the pipeline."""
    from medzoo.inference import cohort
    from medzoo.inference.ensemble import load_models
    from medzoo.packaging import open_model

    started, started_at = time.perf_counter(), time.time()
    runtime.tune_malloc()  # reuse freed buffers across windows and cases
    output_dir = Path(output_dir)
    run_dir = open_model(run_dir) if isinstance(run_dir, (str, Path)) else [open_model(r) for r in run_dir]
    cases = output_cases(find_cases(input_path, options), options.output_format)
    _check_outputs(cases, output_dir)
    with cohort.cohort_group() as info:
        if info.enabled:  # this rank's GPU; one progress bar for the job, not one per rank
            options = replace(options, device=str(resolve_device(options.device, info)),
                              progress=options.progress and info.is_main)
        cohort.remove_interrupted_writes(output_dir, started_at, info)
        mine, skipped = cohort.split_existing(cohort.rank_share(cases, info), output_dir, options.skip_existing)
        log.debug("rank %d/%d predicts: %s", info.rank, info.world_size, ", ".join(c.name for c in mine))
        report = PredictionReport(skipped=skipped)
        if mine:
            predictor = load_models(run_dir, options)
            run_pipeline(predictor.predict_case, mine, output_dir, options.save_probabilities, report=report,
                         progress=options.progress, write_labels=labels_writer(options.output_format, predictor.plan))
        report.seconds = time.perf_counter() - started
        reports = cohort.gather_to_main(report)
    log.debug(  # the CLI prints this summary itself
        "predicted %d/%d case(s) into %s in %.1f s", len(report.written), len(cases), output_dir, report.seconds
    )
    return report if reports is None else cohort.merge_reports(reports)


def output_cases(cases: list[InputCase], output_format: str) -> list[InputCase]:
    """``cases`` with the output file names of ``output_format`` ("image" keeps them; "dicom-seg": ``.dcm``)."""
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format '{output_format}'; choose one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "image":
        return cases
    from medzoo.io.dicom_seg import check_available

    check_available()
    return [replace(case, output_name=f"{case.name}.dcm") for case in cases]


def labels_writer(output_format: str, plan: Plan) -> Callable[[Volume, InputCase, Path], Path] | None:
    """How the pipeline writes a label map in ``output_format`` (None: the volume writer)."""
    if output_format != "dicom-seg":
        return None
    from medzoo.io.dicom_seg import write_dicom_seg

    def write(labels: Volume, case: InputCase, path: Path) -> Path:
        source = case.paths[0]
        if len(case.paths) != 1 or not source.is_dir():
            raise VolumeError(source, "DICOM SEG output needs a DICOM series folder as input")
        return write_dicom_seg(labels, source, path, plan.labels)

    return write


def find_cases(input_path: str | Path, options: PredictOptions) -> list[InputCase]:
    """The cases :func:`predict` runs on: a file or folder, or a dataset folder read through a layout."""
    if options.layout or options.layout_options:
        return collect_layout_cases(input_path, options.layout, **(options.layout_options or {}))
    return collect_cases(input_path)


def load_predictor(run_dir: str | Path, options: PredictOptions) -> Predictor:
    """The :class:`Predictor` for a run folder (or an export) in the runtime ``options.backend`` names."""
    from medzoo.inference.backends import load_backend

    # backend "auto" follows amp: where PyTorch would predict in bf16 (exports run in fp32), PyTorch runs it
    model, plan = load_backend(run_dir, backend=options.backend, checkpoint=options.checkpoint,
                               device=options.device, batch_size=options.batch_size, amp=options.amp)  # fmt: skip
    return Predictor(
        model, plan, device=options.device if options.device is not None else _device_of(model),
        mirror_axes=options.mirror_axes_for(plan), overlap=options.overlap, batch_size=options.batch_size,
        postprocess=options.postprocess(), amp=options.amp, memory_format=options.memory_format,
    )  # fmt: skip


def _check_outputs(cases: list[InputCase], output_dir: Path) -> None:
    inputs = {p.resolve() for c in cases for p in c.paths}
    for c in cases:
        if (output_dir / c.output_name).resolve() in inputs:
            raise ConfigError(f"{output_dir / c.output_name}: the output would overwrite the input; pick another --output")
