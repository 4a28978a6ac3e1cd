"""Plotly figures of the Evaluation page (from services.eval_metrics' dicts): ROC and PR curves with their 95%
bootstrap bands, the reliability diagram, subgroup AUCs with intervals, and the version comparison. Each title
names the model version and says "research use only"; PNG comes from plotly's own toolbar (kaleido is not
installed, so the server makes none)."""

from __future__ import annotations

import plotly.graph_objects as go

from inference.types import RESEARCH_USE

BAND = "rgba(31, 119, 180, 0.18)"
LINE = "rgb(31, 119, 180)"
# Every chart's toolbar offers the PNG download under a name that says what it is.
PNG_SCALE = 2


def config(filename: str) -> dict:
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": filename, "scale": PNG_SCALE}}


def _title(what: str, model: dict) -> str:
    return (f"{what}<br><sup>{model['id']}@{model['version']} · weights sha256 {model['weights_sha256'][:12]}…"
            f"</sup><br><sup>{RESEARCH_USE}</sup>")  # fmt: skip


def _band(fig: go.Figure, x: list[float], lo: list[float], hi: list[float]) -> None:
    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=lo, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=BAND,
                             name="95% bootstrap band", hoverinfo="skip"))  # fmt: skip


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title={"text": title, "font": {"size": 13}}, xaxis_title=x, yaxis_title=y, height=460,
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02], legend={"orientation": "h", "y": -0.2},
                      margin={"t": 90, "l": 50, "r": 20, "b": 40})  # fmt: skip
    return fig


def roc(report: dict, model: dict) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    _band(fig, report["grid"], report["roc_band"]["lo"], report["roc_band"]["hi"])
    lo, hi = report["auc_ci95"]
    fig.add_trace(go.Scatter(x=report["roc"]["fpr"], y=report["roc"]["tpr"], mode="lines", line={"color": LINE},
                             name=f"AUC {report['auc']:.3f} [{lo:.3f}–{hi:.3f}]"))  # fmt: skip
    if (op := report.get("operating_point")) and op["sensitivity"] is not None and op["specificity"] is not None:
        fig.add_trace(go.Scatter(x=[1 - op["specificity"]], y=[op["sensitivity"]], mode="markers",
                                 marker={"size": 11, "color": "orange", "symbol": "diamond"},
                                 name=f"threshold in force {op['threshold']:.4g}"))  # fmt: skip
    return _layout(fig, _title(f"ROC · {report['finding']} (n={report['n']}, {report['n_pos']} positive)", model),
                   "1 - specificity", "sensitivity")  # fmt: skip


def pr(report: dict, model: dict) -> go.Figure:
    fig = go.Figure()
    fig.add_hline(y=report["prevalence"], line_dash="dot", line_color="grey",
                  annotation_text=f"prevalence {report['prevalence']:.3f}")  # fmt: skip
    _band(fig, report["grid"], report["pr_band"]["lo"], report["pr_band"]["hi"])
    lo, hi = report["ap_ci95"]
    fig.add_trace(go.Scatter(x=report["pr"]["recall"], y=report["pr"]["precision"], mode="lines", line={"color": LINE},
                             name=f"AP {report['ap']:.3f} [{lo:.3f}–{hi:.3f}]"))  # fmt: skip
    return _layout(fig, _title(f"Precision-recall · {report['finding']}", model), "recall", "precision")


def reliability(report: dict, model: dict) -> go.Figure:
    cal = report["calibration"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="perfect calibration"))  # fmt: skip
    fig.add_trace(go.Scatter(x=cal["prob_pred"], y=cal["prob_true"], mode="lines+markers", line={"color": LINE},
                             text=[f"{c} images" for c in cal["counts"]],
                             name=f"ECE {cal['ece']:.3f} · Brier {report['brier']:.3f}"))  # fmt: skip
    return _layout(fig, _title(f"Reliability · {report['finding']} ({cal['n_bins']} equal bins)", model),
                   "mean predicted probability", "observed rate")  # fmt: skip


def subgroups(rows: list[dict], finding: str, by: str, model: dict) -> go.Figure:
    shown = [r for r in rows if r["auc"] is not None]
    fig = go.Figure(go.Scatter(
        x=[r["group"] for r in shown], y=[r["auc"] for r in shown], mode="markers",
        marker={"size": 11, "color": ["crimson" if r["gap"] else LINE for r in shown]},
        error_y={"type": "data", "array": [r["ci95"][1] - r["auc"] for r in shown],
                 "arrayminus": [r["auc"] - r["ci95"][0] for r in shown]},
        text=[f"{r['images']} images, {r['positives']} positive" for r in shown], name="AUC, 95% interval",
    ))  # fmt: skip
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey")
    fig.update_layout(title={"text": _title(f"AUC by {by} · {finding} (red: interval apart from another group's)", model),
                             "font": {"size": 13}}, yaxis_range=[0, 1.02], height=420, yaxis_title="AUC",
                      margin={"t": 60, "l": 50, "r": 20, "b": 40})  # fmt: skip
    return fig


def roc_pair(a: dict, b: dict, model_a: dict, model_b: dict) -> go.Figure:
    """Two versions' ROC curves of one finding on the same images, each with its band."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    for report, model, colour, band in ((a, model_a, LINE, BAND), (b, model_b, "rgb(214, 39, 40)",
                                                                  "rgba(214, 39, 40, 0.15)")):  # fmt: skip
        g, lo_band, hi_band = report["grid"], report["roc_band"]["lo"], report["roc_band"]["hi"]
        fig.add_trace(go.Scatter(x=g, y=hi_band, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=g, y=lo_band, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=band,
                                 showlegend=False, hoverinfo="skip"))  # fmt: skip
        lo, hi = report["auc_ci95"]
        fig.add_trace(go.Scatter(x=report["roc"]["fpr"], y=report["roc"]["tpr"], mode="lines", line={"color": colour},
                                 name=f"{model['id']}@{model['version']}: AUC {report['auc']:.3f} [{lo:.3f}–{hi:.3f}]"))  # fmt: skip
    return _layout(fig, f"ROC · {a['finding']} · two versions on the same images<br><sup>{RESEARCH_USE}</sup>",
                   "1 - specificity", "sensitivity")  # fmt: skip


def comparison(rows: list[dict], a: dict, b: dict) -> go.Figure:
    shown = [r for r in rows if r.get("difference") is not None]
    fig = go.Figure(go.Scatter(
        x=[r["difference"] for r in shown], y=[r["finding"] for r in shown], mode="markers",
        error_x={"type": "data", "array": [r["ci95"][1] - r["difference"] for r in shown],
                 "arrayminus": [r["difference"] - r["ci95"][0] for r in shown]},
        marker={"size": 10, "color": LINE}, name="AUC difference, 95% interval",
    ))  # fmt: skip
    fig.add_vline(x=0, line_dash="dot", line_color="grey")
    fig.update_layout(
        title={"text": f"AUC of {a['id']}@{a['version']} minus {b['id']}@{b['version']} (paired, same images)"
                       f"<br><sup>{RESEARCH_USE}</sup>", "font": {"size": 13}},
        xaxis_title="AUC difference", height=80 + 28 * max(len(shown), 3), margin={"t": 60, "l": 140, "r": 20, "b": 40},
    )  # fmt: skip
    return fig
