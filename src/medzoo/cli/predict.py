"""``medzoo predict``: label maps for a scan or a folder of scans, with a trained run or an export."""

from __future__ import annotations

import argparse
import sys

from medzoo.cli.options import add_layout_options
from medzoo.engine.config import AMP_MODES, MEMORY_FORMATS, OUTPUT_FORMATS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict label maps with a trained run (or an exported model)")
    p.add_argument("--model", required=True, nargs="+", metavar="RUN",
                   help="run folder (plan.json + checkpoints), a .medzoo file (medzoo pack) or an .onnx export; a "
                        "cross-validation folder (RUN/fold_k) averages its folds, several runs are averaged (same "
                        "labels)")
    p.add_argument("--input", "-i", required=True,
                   help="an image file, a folder of them, a DICOM series folder or a folder of series folders")
    p.add_argument("--layout", default=None,
                   help="read --input as a dataset folder in this layout (msd, nnunet, brats, iseg, mrbrains, mrbrains2013, "
                        "folder, csv; 'auto' detects) and predict its test cases, or all its cases if none")
    add_layout_options(p)
    p.add_argument("--output", "-o", required=True, help="output folder for the label maps")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint file (default: best)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation over the axes the plan allows (all but left-right for left/right label pairs)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>_probabilities.npz (float16 class probabilities + affine)")
    p.add_argument("--keep-largest", action="store_true", help="keep the largest component of each class")
    p.add_argument("--fill-holes", action="store_true", help="fill enclosed holes of each class")
    p.add_argument("--min-size", type=int, default=0, help="drop components smaller than this (voxels)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="skip the post-processing a cross-validation chose (RUN/postprocessing.json)")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="auto (default): on the CPU OpenVINO (fp32; the run's network exported once and cached in "
                        "RUN/.medzoo_cache), PyTorch where it predicts in bf16 (--amp), without OpenVINO, or when "
                        "the network does not export; PyTorch on a GPU; torch | onnxruntime | openvino force one")
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="autocast precision of a PyTorch network: auto (default: bf16, else fp16, on a GPU; bf16 "
                        "on a CPU with native bf16 (AMX, AVX512-BF16), as training there; else fp32), bf16 (with "
                        "--backend auto on the CPU: predicts with PyTorch), fp16 (GPU), none (fp32: labels equal "
                        "to fp32 PyTorch's up to near-ties)")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="layout of a PyTorch network: auto (default: channels-last on the CPU where the model's "
                        "card says it runs faster so), channels_last, contiguous")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="image",
                   help="image (default): label maps named and typed like the inputs (NIfTI for a DICOM series); "
                        "dicom-seg: a DICOM Segmentation object CASE.dcm over each input DICOM series "
                        "(needs pip install 'medzoo[dicom]')")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep outputs that are there already and predict the rest (rerun a killed job with it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-file", metavar="PATH", help="also write the log lines (one per case, ...) to this file")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.logs import log_file

    with log_file(ns.log_file):
        return _predict(ns)


def _predict(ns: argparse.Namespace) -> int:
    from medzoo.engine.distributed import env_info
    from medzoo.inference.predictor import predict

    report = predict(
        ns.model[0] if len(ns.model) == 1 else ns.model, ns.input, ns.output, checkpoint=ns.checkpoint, device=ns.device, tta=ns.tta,
        overlap=ns.overlap, batch_size=ns.batch_size, save_probabilities=ns.save_probabilities,
        keep_largest=ns.keep_largest, fill_holes=ns.fill_holes, min_size=ns.min_size, backend=ns.backend,
        progress=not ns.no_progress, layout=ns.layout, layout_options=dict(ns.layout_option), amp=ns.amp,
        memory_format=ns.memory_format, chosen_postprocessing=not ns.no_postprocess,
        output_format=ns.output_format, skip_existing=ns.skip_existing,
    )  # fmt: skip
    if not env_info().is_main:  # under torchrun rank 0 reports for the whole job
        return 1 if report.failed else 0
    total = len(report.written) + len(report.failed)
    kept = f" (kept {len(report.skipped)} already there)" if report.skipped else ""
    print(f"wrote {len(report.written)}/{total} label map(s) to {ns.output} in {report.seconds:.1f} s{kept}")
    for name, reason in report.failed:
        print(f"medzoo predict: error: {name}: {reason}", file=sys.stderr)
    if report.failed:
        print(f"medzoo predict: {len(report.failed)} case(s) failed", file=sys.stderr)
        return 1
    return 0
