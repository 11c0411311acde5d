"""``medzoo export``: write a run's network as ONNX or TorchScript (checked against PyTorch) + a JSON card."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained network to ONNX or TorchScript")
    p.add_argument("--model", required=True, help="run folder (plan.json + checkpoints)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default: onnx")
    p.add_argument("--out", default=None, help="output file (default: RUN/model.onnx or RUN/model_torchscript.pt)")
    p.add_argument("--checkpoint", default="best", help="best | last (default: best)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--atol", type=float, default=1e-4, help="allowed |export - PyTorch| on the outputs' scale, times max(1, max |logit|) (default 1e-4)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo.export import export_model

    result = export_model(ns.model, ns.format, ns.out, checkpoint=ns.checkpoint, opset=ns.opset, atol=ns.atol)
    axes = "dynamic batch and spatial axes" if result.dynamic_spatial else "dynamic batch, fixed spatial size"
    print(f"wrote {result.path} ({axes}; max |diff| vs PyTorch {result.max_abs_diff:.1e}) and {result.card_path.name}")
    return 0
