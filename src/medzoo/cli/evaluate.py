"""``medzoo evaluate``: Dice, HD95, ... of predicted label maps against references (+ an HTML report)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted label maps against references")
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--ref", required=True, help="folder of reference label maps (same file names)")
    p.add_argument("--out", default=None, help="JSON file to write (a CSV is written beside it)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="label values to score, optionally named: 1 2 or 1:csf 2:gm (default: all found)")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="dice iou precision recall hd95 hd assd nsd vol_pred vol_ref "
                        "(default: dice iou precision recall hd95 assd nsd)")
    p.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    p.add_argument("--dataset-json", default=None, help="dataset.json to name the labels")
    p.add_argument("--report", default=None, metavar="DIR", help="write an offline HTML report to DIR")
    p.add_argument("--images", default=None, metavar="DIR", help="images to draw under the report's overlays")
    p.add_argument("--workers", type=int, default=None, help="parallel cases (default min(4, CPUs))")
    p.add_argument("--regions", nargs="*", default=None, metavar="NAME=V,V",
                   help="score regions (unions of label values), e.g. WT=1,2,4 TC=1,4 ET=4; 'brats' for those "
                        "three; no value: the regions of the dataset.json (--dataset-json or beside --ref)")
    p.add_argument("--ignore-label", type=int, default=None, metavar="V",
                   help="reference value of unannotated voxels, not scored (default: dataset.json's 'ignore')")
    p.set_defaults(func=run)


def _parse_labels(items: list[str] | None):
    from medzoo.errors import ConfigError

    if not items:
        return None
    named: dict[int, str] = {}
    plain: list[int] = []
    for item in items:
        value, _, name = item.partition(":")
        try:
            v = int(value)
        except ValueError:
            raise ConfigError(f"--labels: '{item}' is not an integer label (examples: 1, 2:tumour)") from None
        if name:
            named[v] = name
        plain.append(v)
    return {v: named.get(v, f"label_{v}") for v in plain} if named else plain


def _parse_regions(items: list[str] | None, dataset_json: str | None, ref: str):
    """``--regions`` values as {name: [values]} (None: not asked), and the dataset.json's ignore label."""
    from pathlib import Path

    from medzoo.errors import ConfigError
    from medzoo.evaluation import regions_from_dataset_json

    if items is None:
        return None, None
    if items == ["brats"]:
        return {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}, None
    if not items:
        path = Path(dataset_json) if dataset_json else Path(ref).resolve().parent / "dataset.json"
        if not path.is_file():
            raise ConfigError(f"--regions without values reads a dataset.json; none at {path} (use --dataset-json)")
        return regions_from_dataset_json(path)
    regions = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            regions[name] = [int(v) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--regions: '{item}' is not NAME=V,V (e.g. TC=1,4)") from None
        if not name:
            raise ConfigError(f"--regions: '{item}' has no name (e.g. TC=1,4)")
    return regions, None


def run(ns: argparse.Namespace) -> int:
    from medzoo.evaluation import evaluate

    regions, ignore = _parse_regions(ns.regions, ns.dataset_json, ns.ref)
    result = evaluate(
        ns.pred, ns.ref, out_json=ns.out, labels=_parse_labels(ns.labels), metrics=ns.metrics,
        report_dir=ns.report, images_dir=ns.images, dataset_json=ns.dataset_json, tolerance_mm=ns.tolerance,
        workers=ns.workers, regions=regions,
        ignore_label=ns.ignore_label if ns.ignore_label is not None else ignore,
    )  # fmt: skip
    print(result.table())
    if result.json_path:
        print(f"wrote {result.json_path} and {result.csv_path}")
    if result.report_path:
        print(f"report: {result.report_path}")
    return 0
