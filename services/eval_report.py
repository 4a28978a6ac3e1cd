"""`cxr-review eval --report DIR`: report.json plus interactive HTML plots (plotly; plotly.min.js is written
once beside them, so the report opens offline). Static image export would need kaleido, which is not a
dependency."""

from __future__ import annotations

import json
from pathlib import Path

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


def write(report: dict, folder: Path) -> list[Path]:
    """Write report.json and the plots of one evaluation; returns the files written."""
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
