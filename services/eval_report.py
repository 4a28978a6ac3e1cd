"""`cxr-review eval --report DIR`: report.json plus interactive HTML plots (plotly; plotly.min.js is written
once beside them, so the report opens offline). Static image export would need kaleido, which is not a
dependency."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import plotly.graph_objects as go


def _ref(model: dict) -> str:
    return f"{model['id']}@{model['version']}"


def _title(report: dict) -> str:
    vs = f" against {_ref(report['against']['model'])}" if report.get("against") else ""
    return f"{_ref(report['model'])}{vs} · {report['task']} · research use only"


def _write(fig: go.Figure, path: Path) -> Path:
    fig.write_html(path, include_plotlyjs="directory", full_html=True)
    return path


def _roc_figure(per: dict, title: str) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance")
    )
    for label, r in per.items():
        if r.get("roc"):
            lo, hi = r["ci95"]
            fig.add_trace(go.Scatter(
                x=r["roc"]["fpr"], y=r["roc"]["tpr"], mode="lines",
                name=f"{label}: {r['auc']:.3f} [{lo:.2f}–{hi:.2f}] (n+={r['n_pos']})",
            ))  # fmt: skip
    fig.update_layout(
        title=title, xaxis_title="1 - specificity", yaxis_title="sensitivity", width=900, height=700
    )
    return fig


def _auc_bars(per: dict, title: str) -> go.Figure:
    labels = [k for k, v in per.items() if v.get("auc") is not None]
    auc = [per[k]["auc"] for k in labels]
    lo = [per[k]["auc"] - per[k]["ci95"][0] for k in labels]
    hi = [per[k]["ci95"][1] - per[k]["auc"] for k in labels]
    fig = go.Figure(go.Bar(x=labels, y=auc, error_y={"type": "data", "array": hi, "arrayminus": lo}))
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey")
    fig.update_layout(
        title=title, yaxis_title="AUC (95% bootstrap interval)", yaxis_range=[0, 1], width=900, height=500
    )
    return fig


# BGR outline colours of the failure gallery: the reference, then each version in turn (magenta against green
# stays apart for red-green colour blindness).
_TRUTH = (0, 200, 0)
_VERSIONS = ((255, 0, 255), (0, 165, 255))
_TILE = 360  # gallery tile width in px


def _put(canvas: np.ndarray, text: str, x: int, y: int, colour=(255, 255, 255), scale: float = 0.45) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _tile(case: dict, value: int, name: str) -> np.ndarray:
    """One radiograph at tile width with the true outline of class `value` and each version's."""
    h, w = case["image"].shape
    f = _TILE / w
    img = cv2.resize(
        (case["image"] * 255).astype(np.uint8), (_TILE, round(h * f)), interpolation=cv2.INTER_AREA
    )
    tile = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for label_map, colour in ((case["truth"], _TRUTH), *zip(case["predictions"], _VERSIONS, strict=False)):
        contours, _ = cv2.findContours((label_map == value).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)  # fmt: skip
        # Outlines found at full resolution and scaled, so they stay thin and exact on the small tile.
        scaled = [np.round(c.astype(np.float32) * f).astype(np.int32) for c in contours]
        cv2.polylines(tile, scaled, True, colour, 1, cv2.LINE_AA)
    caption = np.zeros((22 * (1 + len(case["predictions"])), _TILE, 3), np.uint8)
    _put(caption, case["file"], 6, 16)
    for i, (dice, colour) in enumerate(zip(case["dice"], _VERSIONS, strict=False)):
        _put(caption, f"Dice {dice[name]:.3f}", 6, 38 + 22 * i, colour)
    return np.vstack([tile, caption])


def _gallery(report: dict, cases: list[dict], value: int, name: str) -> np.ndarray:
    """The lowest-Dice images of one class side by side under a title and a colour key."""
    tiles = [_tile(c, value, name) for c in cases]
    height = max(t.shape[0] for t in tiles)
    row = np.hstack([np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for t in tiles])
    refs = [_ref(report["model"])] + ([_ref(report["against"]["model"])] if report.get("against") else [])
    head = np.zeros((70, max(row.shape[1], 760), 3), np.uint8)
    _put(head, f"Lowest Dice, {name}: {len(cases)} of {report['n_images']} images. Research use only", 6, 20,
         scale=0.55)  # fmt: skip
    _put(head, "reference outline", 6, 44, _TRUTH)
    for i, (ref, colour) in enumerate(zip(refs, _VERSIONS, strict=False)):
        _put(head, ref, 160 + 260 * i, 44, colour)
    _put(head, "ordered by the first version's Dice", 6, 64, (180, 180, 180))
    row = np.pad(row, ((0, 0), (0, head.shape[1] - row.shape[1]), (0, 0)))
    return np.vstack([head, row])


def write(report: dict, folder: Path, cases: list[dict] | None = None) -> list[Path]:
    """Write report.json and the plots of one evaluation; returns the files written. `cases`: a segmentation's
    lowest-Dice images per class (evaluation.lowest_dice_cases), drawn as lowest_dice_<class>.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / "report.json"]
    out[0].write_text(json.dumps(report, indent=1) + "\n")
    title = _title(report)
    task = report["task"]
    if task == "classification":
        out.append(
            _write(_roc_figure(report["per_finding"], f"ROC per finding — {title}"), folder / "roc.html")
        )
        out.append(
            _write(
                _auc_bars(report["per_finding"], f"AUC per finding — {title}"),
                folder / "auc_per_finding.html",
            )
        )
        multi = report["multi_finding"]["per_finding"]
        out.append(
            _write(
                _roc_figure(multi, f"ROC, images with ≥2 findings — {title}"),
                folder / "roc_multi_finding.html",
            )
        )
    elif task == "ctr":
        out.append(
            _write(_roc_figure({"Cardiomegaly from CTR": report}, f"ROC — {title}"), folder / "roc.html")
        )
    elif task == "segmentation":
        names = list(report["dice"])
        fig = go.Figure()
        versions = [(_ref(report["model"]), report["dice"])]
        if against := report.get("against"):  # --against: the other version's bars beside, same images
            versions.append((_ref(against["model"]), against["dice"]))
        for ref, dice in versions:
            mean = [dice[n]["mean"] for n in names]
            # reports written before intervals existed have none: a zero-width bar
            ci = [dice[n].get("ci95") or [dice[n]["mean"]] * 2 for n in names]
            fig.add_trace(go.Bar(x=names, y=mean, name=f"{ref} mean (95% interval)", error_y={
                "type": "data", "array": [c[1] - m for m, c in zip(mean, ci, strict=True)],
                "arrayminus": [m - c[0] for m, c in zip(mean, ci, strict=True)]}))  # fmt: skip
            fig.add_trace(go.Bar(x=names, y=[dice[n]["min"] for n in names], name=f"{ref} min"))
        fig.update_layout(title={"text": f"Dice per class — {title}", "font": {"size": 14}}, yaxis_range=[0, 1],
                          barmode="group", width=900, height=540, legend={"orientation": "h", "y": -0.12})  # fmt: skip
        out.append(_write(fig, folder / "dice_per_class.html"))
        if report.get("per_image"):
            box = go.Figure([go.Box(y=[r[n] for r in report["per_image"]], name=n, boxpoints="all",
                                    text=[r["file"] for r in report["per_image"]]) for n in names])  # fmt: skip
            box.update_layout(title=f"Dice per image — {title}", width=800, height=500)
            out.append(_write(box, folder / "dice_per_image.html"))
        for c in cases or []:
            path = folder / f"lowest_dice_{c['class']}.png"
            if c["cases"] and cv2.imwrite(str(path), _gallery(report, c["cases"], c["value"], c["class"])):
                out.append(path)
    elif task == "bone_suppression":
        rows = report["per_image"]
        fig = go.Figure()
        for key, name in (("mae", "model output"), ("input_mae", "unprocessed radiograph")):
            fig.add_trace(go.Bar(x=[r["file"] for r in rows], y=[r[key] for r in rows], name=name))
        fig.update_layout(
            title=f"MAE to the soft-tissue image — {title}", barmode="group", width=900, height=500
        )
        out.append(_write(fig, folder / "mae_per_image.html"))
    return out
