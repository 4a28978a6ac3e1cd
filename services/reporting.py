"""A draft report from what the reader accepted: plain sentences, in the order a radiologist writes them
(lines and devices, lungs, pleura, heart and mediastinum, bones and other), then the impression."""

from __future__ import annotations

from collections.abc import Iterable

from services.analysis import CTR_LIMIT, Analysis, ctr_shown, flagged

# NIH finding -> (section, sentence). Sections in reporting order.
SECTIONS = ("Lungs", "Pleura", "Heart and mediastinum", "Other")
SENTENCES = {
    "Infiltration": ("Lungs", "Pulmonary infiltrate."),
    "Consolidation": ("Lungs", "Airspace consolidation."),
    "Pneumonia": ("Lungs", "Appearances may represent pneumonia."),
    "Atelectasis": ("Lungs", "Atelectasis."),
    "Nodule": ("Lungs", "Pulmonary nodule."),
    "Mass": ("Lungs", "Pulmonary mass."),
    "Edema": ("Lungs", "Pulmonary oedema."),
    "Emphysema": ("Lungs", "Hyperinflation in keeping with emphysema."),
    "Fibrosis": ("Lungs", "Fibrotic change."),
    "Effusion": ("Pleura", "Pleural effusion."),
    "Pneumothorax": ("Pleura", "Pneumothorax."),
    "Pleural_Thickening": ("Pleura", "Pleural thickening."),
    "Cardiomegaly": ("Heart and mediastinum", "The heart is enlarged."),
    "Hernia": ("Other", "Hiatus hernia."),
}


def accepted(verdicts: Iterable, result: Analysis) -> set[tuple[str, str]]:
    """(item_kind, item_key) of the reader's verdicts that say "accept" on what these results' models said.
    Rejected and uncertain items never reach the report, nor verdicts on another model version's output."""
    return judged(verdicts, result, "accept")


def judged(verdicts: Iterable, result: Analysis, decision: str) -> set[tuple[str, str]]:
    """(item_kind, item_key) of the reader's verdicts with that decision on these results' models' output."""
    current = {(m["id"], m["version"]) for m in result.models}
    return {
        (v.item_kind, v.item_key)
        for v in verdicts
        if getattr(v.decision, "value", v.decision) == decision and (v.model_id, v.model_version) in current
    }


def _all_rejected(result: Analysis, accepted: set[tuple[str, str]], rejected: set[tuple[str, str]] | None) -> bool:
    """A version without a "No Finding" label cannot have it accepted: the film is called normal when the reader
    accepted no finding and rejected every finding the version flagged (none flagged: nothing to reject)."""
    if rejected is None or not result.findings or "No Finding" in result.findings["probabilities"]:
        return False
    flagged_now = {("finding", label) for label, on in flagged(result).items() if on}
    return not any(kind == "finding" for kind, _ in accepted) and flagged_now <= rejected


def draft(
    result: Analysis, accepted: set[tuple[str, str]], view_position: str | None,
    rejected: set[tuple[str, str]] | None = None,
) -> str:  # fmt: skip
    by_section: dict[str, list[str]] = {s: [] for s in SECTIONS}
    for label, (section, sentence) in SENTENCES.items():
        if ("finding", label) in accepted:
            by_section[section].append(sentence)
    ctr = ctr_shown(result.anatomy)
    if ctr and ("ctr", "ctr") in accepted:
        view = (view_position or "").upper()
        caveat = " (AP projection: overestimates heart size)" if view == "AP" else ""
        verdict = "above" if ctr["ratio"] > CTR_LIMIT else "within"
        by_section["Heart and mediastinum"].append(
            f"Cardiothoracic ratio {ctr['ratio']:.2f}, {verdict} the normal limit of {CTR_LIMIT:.2f}{caveat}."
        )
    lines = [f"{s}: {' '.join(v)}" for s, v in by_section.items() if v]
    findings = [SENTENCES[label][1].rstrip(".") for label in SENTENCES if ("finding", label) in accepted]
    if not findings and (("finding", "No Finding") in accepted or _all_rejected(result, accepted, rejected)):
        lines.append("No acute cardiopulmonary abnormality.")
    impression = "; ".join(findings) if findings else ("No acute abnormality." if lines else "")
    body = "\n".join(lines) if lines else "No AI statement accepted yet."
    return (
        f"FINDINGS:\n{body}\n\nIMPRESSION:\n{impression or '-'}\n\n(Draft assisted by research-use-only AI.)"
    )
