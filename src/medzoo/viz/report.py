"""Offline HTML evaluation report: summary, box plots per class, per-case table and overlays, worst first.

The page (``index.html``) uses inline CSS only and no scripts; pictures are PNG files in ``img/`` next to it,
so the folder can be zipped, mailed and opened anywhere without a network.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medzoo.utils import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from medzoo.evaluation import EvaluationResult

log = logging.getLogger(__name__)

__all__ = ["find_image", "save_boxplot", "write_report"]

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; font-family: monospace; }
.meta { color: #666; font-size: 12px; } .figs img { max-width: 100%; margin: 6px; border: 1px solid #eee; }
.case { display: inline-block; vertical-align: top; margin: 6px; } .case p { margin: 2px; font-size: 12px; }
"""

_LOWER_IS_BETTER = {"hd95", "hd", "assd"}


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"


def _dice_colour(v: float) -> str:
    """Background colour for a Dice-like value in [0, 1] (red -> yellow -> green)."""
    if not math.isfinite(v):
        return "#eeeeee"
    v = min(max(v, 0.0), 1.0)
    r = int(255 if v < 0.5 else 255 * (1 - v) * 2)
    g = int(255 * v * 2 if v < 0.5 else 255)
    return f"rgb({(r + 255 * 2) // 3},{(g + 255 * 2) // 3},{(80 + 255 * 2) // 3})"


def save_boxplot(result: EvaluationResult, metric: str, path: Path) -> Path:
    """Box plot of ``metric`` with one box per class (finite values; the count of infinite ones in the label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, names = [], []
    for lab, name in result.labels.items():
        vals = np.array([result.cases[c][lab][metric] for c in result.cases], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        n_inf = int(vals.size - finite.size)
        data.append(finite if finite.size else np.array([np.nan]))
        names.append(f"{name}" + (f"\n({n_inf} inf)" if n_inf else ""))
    fig, ax = plt.subplots(figsize=(max(3.0, 1.3 * len(names) + 1.5), 3.2))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    for i, d in enumerate(data, start=1):  # the individual cases, jittered
        jitter = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(len(d))
        ax.plot(i + jitter, d, ".", color="tab:blue", alpha=0.5, markersize=4)
    ax.set_title(metric + (" (mm)" if metric in _LOWER_IS_BETTER else ""))
    if metric not in _LOWER_IS_BETTER and metric not in ("vol_pred", "vol_ref"):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def find_image(images_dir: Path, name: str) -> Path | None:
    """The image for a label file ``name``: same name, or the nnU-Net channel file ``<case>_0000<suffix>``."""
    from medzoo.io.readers import volume_suffix

    same = images_dir / name
    if same.is_file():
        return same
    suffix = volume_suffix(name)
    stem = name[: -len(suffix)] if suffix else name
    for candidate in (images_dir / f"{stem}_0000{suffix}",):
        if candidate.is_file():
            return candidate
    return None


def _load_labels(path: Path) -> np.ndarray:
    from medzoo.io.readers import read_volume

    arr = read_volume(path).array
    return np.rint(arr[0]).astype(np.int32) if arr.dtype.kind == "f" else arr[0]


def _overlay_for_case(result, name: str, pred_dir: Path, ref_dir: Path, images_dir: Path | None, out: Path):
    from medzoo.io.readers import read_volume
    from medzoo.viz.overlay import save_comparison_png

    ref = _load_labels(ref_dir / name)
    pred = _load_labels(pred_dir / name)
    image = None
    if images_dir is not None:
        path = find_image(images_dir, name)
        if path is None:
            log.warning("no image for %s in %s; drawing the labels alone", name, images_dir)
        else:
            arr = read_volume(path).array[0]
            if arr.shape == ref.shape:
                image = arr
            else:
                log.warning("image %s has shape %s, labels %s; drawing the labels alone", path, arr.shape, ref.shape)
    score = result.case_score(name)
    title = f"{name} — mean Dice {score:.3f}" if "dice" in result.metrics else name
    return save_comparison_png(image, ref, pred, out, spacing=result.spacings.get(name), title=title)


def write_report(
    result: EvaluationResult,
    report_dir: str | Path,
    *,
    pred_dir: str | Path,
    ref_dir: str | Path,
    images_dir: str | Path | None = None,
    max_overlays: int = 24,
) -> Path:
    """Write ``report_dir/index.html`` (+ ``img/*.png``) for an evaluation result.

    Args:
        result: from :func:`medzoo.evaluation.evaluate`.
        report_dir: output folder (created).
        pred_dir, ref_dir: the evaluated folders (label maps are re-read for the overlays).
        images_dir: optional images to draw under the labels.
        max_overlays: overlay pictures for the worst cases (0 for none).

    Returns:
        The path of ``index.html``.
    """
    report_dir = Path(report_dir)
    img_dir = report_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    images = Path(images_dir) if images_dir is not None else None
    esc = html.escape

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>medzoo evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>medzoo evaluation</h1>",
        f"<p class='meta'>{len(result.cases)} case(s) &middot; predictions: {esc(str(pred_dir))} &middot; "
        f"references: {esc(str(ref_dir))} &middot; NSD tolerance {result.tolerance_mm:g} mm &middot; "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        "<p class='meta'>Empty-mask rule: a class absent from both maps scores Dice 1 and distance 0; present in "
        "only one, Dice 0 and distance inf (inf values are counted, not averaged).</p>",
    ]

    # summary
    parts.append("<h2>Summary (mean &plusmn; std, median)</h2><table><tr><th>class</th>")
    parts += [f"<th>{esc(m)}</th>" for m in result.metrics]
    parts.append("</tr>")
    for lab, name in result.labels.items():
        parts.append(f"<tr><td class='name'>{lab} {esc(name)}</td>")
        for m in result.metrics:
            s = result.summary["per_class"][name][m]
            text = "n/a" if s["n"] == 0 else f"{_fmt(s['mean'])} &plusmn; {_fmt(s['std'])}<br>{_fmt(s['median'])}"
            if s["n_infinite"]:
                text += f"<br>({s['n_infinite']} inf)"
            parts.append(f"<td>{text}</td>")
        parts.append("</tr>")
    parts.append("<tr><th>mean foreground</th>")
    parts += [f"<th>{_fmt(result.mean_foreground[m])}</th>" for m in result.metrics]
    parts.append("</tr></table>")

    # box plots
    parts.append("<h2>Distribution per class</h2><div class='figs'>")
    for m in result.metrics:
        if m in ("vol_pred", "vol_ref"):
            continue
        png = save_boxplot(result, m, img_dir / f"box_{m}.png")
        parts.append(f"<img src='img/{png.name}' alt='box plot of {esc(m)}'>")
    parts.append("</div>")

    # per-case table, worst first
    parts.append("<h2>Cases (worst first)</h2><table><tr><th>#</th><th>case</th>")
    for name in result.labels.values():
        parts += [f"<th>{esc(name)}<br>{esc(m)}</th>" for m in result.metrics]
    parts.append("</tr>")
    for rank, case in enumerate(result.worst_cases, start=1):
        parts.append(f"<tr><td>{rank}</td><td class='name'>{esc(case)}</td>")
        for lab in result.labels:
            for m in result.metrics:
                v = result.cases[case][lab][m]
                style = f" style='background:{_dice_colour(v)}'" if m in ("dice", "iou", "nsd") else ""
                parts.append(f"<td{style}>{_fmt(v)}</td>")
        parts.append("</tr>")
    parts.append("</table>")

    # overlays
    if max_overlays > 0:
        parts.append(
            "<h2>Overlays (worst first; top: reference, bottom: prediction"
            + (", over the image" if images is not None else "") + ")</h2><div>"
        )
        for rank, case in enumerate(result.worst_cases[:max_overlays], start=1):
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case)
            png = _overlay_for_case(result, case, pred_dir, ref_dir, images, img_dir / f"case_{rank:03d}_{safe}.png")
            parts.append(f"<div class='case'><p>{rank}. {esc(case)}</p><img src='img/{png.name}' "
                         f"alt='overlay {esc(case)}' width='560'></div>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return atomic_write_text(report_dir / "index.html", "\n".join(parts))
