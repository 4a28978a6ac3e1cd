"""The report consistency check: the report's statements (reports.labeller, negation-aware) against the AI's
findings and the reader's verdicts.

A finding is *positive* when the AI's probability is at least the operating point in force
(`Analysis.thresholds`). Per NIH finding the AI scored:

- `negated_but_ai_positive`: the report negates it, the AI scores it positive and the reader did not reject it;
- `omitted_but_ai_positive`: the report does not name it, the AI scores it positive and the reader accepted it;
- `asserted_but_ai_negative`: the report asserts it, and the AI scores it negative and the reader did not
  accept it, or the reader rejected it.

An uncertain mention ("possible effusion", "cannot exclude pneumothorax") is neither asserted nor negated: the
radiologist hedged, which contradicts neither a positive nor a negative score, so it raises no flag; it does
count as mentioned (no `omitted` flag). Where the labeller finds both, a present mention outweighs a negated
one (its `decide` rule), as for a row of labels.

A report with no text is not checked, nor one that does not read as English: the labeller finds no finding
in it and it has no English function word or common radiology word ("the", "no", "lungs", "clear"), or it is
long (20 words or more) and the labeller finds nothing while fewer than one word in twenty is such a word.
The reason is returned instead of flags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from reports import labeller

KINDS = ("negated_but_ai_positive", "omitted_but_ai_positive", "asserted_but_ai_negative")
KIND_TEXT = {
    "negated_but_ai_positive": "the report negates it, the AI scores it positive",
    "omitted_but_ai_positive": "the report leaves out a finding you accepted and the AI scores positive",
    "asserted_but_ai_negative": "the report asserts it, the AI scores it negative (or you rejected it)",
}
NO_TEXT = "the report has no text: saved without a consistency check"
NOT_ENGLISH = "the report does not read as English: saved without a consistency check (the check reads English only)"
LONG_TEXT_WORDS = 20

# English function words and the commonest words of a chest report: what makes a text read as English.
ENGLISH_WORDS = frozenset(
    """a an the and or of in on at to with without no not is are was were be been there this that these those
    for from by as it its has have had but if which than then both either neither nor any seen noted
    lung lungs heart chest clear size unchanged left right lobe upper lower
    acute abnormality evidence findings impression
    """.split()
)
_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)


@dataclass
class Flag:
    finding: str
    kind: str
    report_text: str | None  # the sentence that negates or asserts it; None when omitted
    ai_probability: float
    threshold: float
    verdict: str | None = None
    acknowledged: bool = False
    note: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Result:
    flags: list[Flag] = field(default_factory=list)
    skipped: str | None = None  # why no check ran (no text, not English)

    def to_json(self) -> dict:
        return {"skipped": self.skipped, "flags": [f.to_json() for f in self.flags]}


def not_checked_reason(text: str, mentions: Mapping[str, labeller.Mention]) -> str | None:
    words = [w.lower() for w in _WORDS.findall(text or "")]
    if not words:
        return NO_TEXT
    if mentions:
        return None
    english = sum(w in ENGLISH_WORDS for w in words)
    if english == 0 or (len(words) >= LONG_TEXT_WORDS and english * 20 < len(words)):
        return NOT_ENGLISH
    return None


def check(
    text: str,
    probabilities: Mapping[str, float],
    thresholds: Mapping[str, float],
    verdicts: Mapping[str, str] | None = None,
) -> Result:
    """The flags of a report text. `verdicts`: {finding: "accept" | "reject" | "uncertain"} of the reader on
    the current model's findings (others are ignored)."""
    verdicts = verdicts or {}
    mentions = labeller.label(text or "")
    if (reason := not_checked_reason(text, mentions)) is not None:
        return Result(skipped=reason)
    flags = []
    for finding in labeller.FINDINGS:
        if finding not in probabilities or finding not in thresholds:
            continue
        p, thr, v = float(probabilities[finding]), float(thresholds[finding]), verdicts.get(finding)
        positive = p >= thr
        m = mentions.get(finding)
        kind = None
        if m is not None and m.value == labeller.NEGATED and positive and v != "reject":
            kind = "negated_but_ai_positive"
        elif m is None and positive and v == "accept":
            kind = "omitted_but_ai_positive"
        elif m is not None and m.value == labeller.PRESENT and ((not positive and v != "accept") or v == "reject"):
            kind = "asserted_but_ai_negative"
        if kind:
            flags.append(Flag(finding, kind, m.sentence if m else None, p, thr, v))
    return Result(flags=flags)


# The measurement sentence of the draft ("Cardiothoracic ratio 0.56, ...") and what a reader writes for it.
_CTR = re.compile(r"\b(cardio-?thoracic ratio|CTR)\b", re.IGNORECASE)


@dataclass(frozen=True)
class SentenceLink:
    """A sentence of the report and the AI overlays it speaks of: finding heatmaps, the CTR lines."""

    sentence: str
    span: tuple[int, int]
    findings: tuple[str, ...]  # in the order the sentence names them, each once
    ctr: bool


def sentence_links(text: str, heatmaps: set[str], ctr_available: bool) -> list[SentenceLink]:
    """Each sentence of the read sections that names a finding with a heatmap (present, negated or uncertain:
    the reader checks all three against the image) or the cardiothoracic ratio when it is shown, in text order."""
    text = text or ""
    named: dict[tuple[int, int], list[str]] = {}
    for m in labeller.find_mentions(text):
        if m.finding in heatmaps and m.finding not in named.setdefault(m.sentence_span, []):
            named[m.sentence_span].append(m.finding)
    links = []
    for section, start, end in labeller.sections(text):
        if not labeller.is_read(section):
            continue
        for span in labeller.sentences(text, start, end):
            sentence = text[span[0] : span[1]]
            ctr = ctr_available and _CTR.search(sentence) is not None
            if named.get(span) or ctr:
                links.append(SentenceLink(sentence.strip(), span, tuple(named.get(span, ())), ctr))
    return links


def carry_acknowledgements(result: Result, earlier: list[dict]) -> Result:
    """Acknowledgements (and notes) of earlier flags of the same finding and kind stay on the new check."""
    acked = {(f["finding"], f["kind"]): f for f in earlier if f.get("acknowledged")}
    for f in result.flags:
        if (old := acked.get((f.finding, f.kind))) is not None:
            f.acknowledged, f.note = True, old.get("note")
    return result


def finding_verdicts(mine, models: list[dict]) -> dict[str, str]:
    """{finding: decision} of the reader's verdicts on findings of the current models (services.verdicts.Mine)."""
    current = {(m["id"], m["version"]) for m in models}
    return {
        v.item_key: getattr(v.decision, "value", v.decision)
        for v in mine
        if v.item_kind == "finding" and (v.model_id, v.model_version) in current
    }
