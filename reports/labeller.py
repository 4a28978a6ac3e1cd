"""Labels of the 14 NIH findings from radiology report text, aware of negation and uncertainty.

In the tradition of NegBio and the CheXpert labeller, with regular expressions instead of a parser: the text
is cut into sections (only findings-like sections are read, see data/sections.toml) and sentences; terms and
synonyms of each finding (data/findings.toml) are found in each sentence; each mention is classified by the
negation, uncertainty and pseudo-negation cues around it within their scope (data/cues.toml). Per report, a
finding is present (1) if any mention is, else uncertain (-1) if any mention is, else negated (0); a finding
never mentioned has no label. "No Finding" is 1 when no finding is present or uncertain.

Every mention keeps its section, sentence and character span, so a label can be traced to the words that
produced it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
NO_FINDING = "No Finding"
COLUMNS = (*FINDINGS, NO_FINDING)
PRESENT, NEGATED, UNCERTAIN = 1, 0, -1
_PRECEDENCE = {PRESENT: 2, UNCERTAIN: 1, NEGATED: 0}  # one present mention outweighs any number of others


@dataclass(frozen=True)
class Mention:
    """One finding named in one sentence. `span` and `sentence_span` are character offsets into the string
    that was labelled (the text given to `label`, or the part's own text for `label_parts`)."""

    finding: str
    value: int  # PRESENT, NEGATED or UNCERTAIN
    section: str  # lower-case section name: a header in the text, or the part's name ("" for none)
    span: tuple[int, int]
    sentence_span: tuple[int, int]
    term: str  # the words that named the finding
    sentence: str
    cue: str | None  # the words that made it negated or uncertain (or the phrase that says "absent")


@dataclass(frozen=True)
class _Cue:
    kind: str  # "pseudo", "uncertainty" or "negation"
    direction: str  # "pre" governs what follows, "post" what precedes
    start: int
    end: int


_CUE_VALUE = {"pseudo": PRESENT, "uncertainty": UNCERTAIN, "negation": NEGATED}


def _load(name: str) -> dict:
    return tomllib.loads(resources.files("reports").joinpath("data", name).read_text(encoding="utf-8"))


def _any(patterns: Iterable[str]) -> re.Pattern | None:
    patterns = list(patterns)
    if not patterns:
        return None
    # (?<!\w) / (?!\w) rather than \b: some cues end in punctuation ("vs.", "r/o").
    return re.compile(r"(?<!\w)(?:" + "|".join(f"(?:{p})" for p in patterns) + r")(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class _Rules:
    terms: dict[str, re.Pattern]
    exclude: dict[str, re.Pattern | None]
    absent: dict[str, re.Pattern | None]
    cues: dict[str, list[tuple[str, re.Pattern]]]  # kind -> [(direction, pattern)]
    terminators: re.Pattern
    post_scope_words: int
    headers: re.Pattern
    skip_sections: frozenset[str]


@cache
def _rules() -> _Rules:
    findings, cues, sections = _load("findings.toml"), _load("cues.toml"), _load("sections.toml")
    if set(findings) != set(FINDINGS):
        raise ValueError(f"findings.toml must list exactly {FINDINGS}")
    # One pattern per cue, not one alternation: an alternation stops at the first cue that matches ("no"),
    # and the longest one must win ("no opacity to suggest").
    by_kind = {
        kind: [(d, _any([p])) for d in ("pre", "post") for p in cues[kind].get(d, [])] for kind in _CUE_VALUE
    }
    terminators = cues["terminators"]
    names = sorted({*sections["read"], *sections["skip"]}, key=len, reverse=True)
    return _Rules(
        terms={f: _any(findings[f]["terms"]) for f in FINDINGS},
        exclude={f: _any(findings[f].get("exclude", [])) for f in FINDINGS},
        absent={f: _any(findings[f].get("absent", [])) for f in FINDINGS},
        cues=by_kind,
        terminators=re.compile(
            r"(?<!\w)(?:"
            + "|".join(terminators["words"])
            + r")(?!\w)|"
            + "|".join(re.escape(p) for p in terminators["punctuation"]),
            re.IGNORECASE,
        ),
        post_scope_words=cues["post_scope_words"],
        # A header starts a line or follows a sentence ("... clear. IMPRESSION: ..."), so that "compared with
        # the prior exam: ..." inside a sentence opens no section.
        headers=re.compile(
            r"(?:^|(?<=[.!?] ))[ \t]*(" + "|".join(re.escape(n) for n in names) + r")[ \t]*:",
            re.IGNORECASE | re.MULTILINE,
        ),
        skip_sections=frozenset(sections["skip"]),
    )


def section_name(name: str) -> str:
    """A header or column name as the section rules spell it: `Clinical_History` -> `clinical history`."""
    return " ".join(name.replace("_", " ").lower().split())


def is_read(section: str) -> bool:
    """Whether a section of this name is labelled (the indication, history, comparison... are not)."""
    return section_name(section) not in _rules().skip_sections


def sections(text: str, name: str = "") -> list[tuple[str, int, int]]:
    """(section name, start, end) of the text: the part before the first known header is named `name`."""
    found, start = [], 0
    current = section_name(name)
    for m in _rules().headers.finditer(text):
        found.append((current, start, m.start()))
        current, start = section_name(m.group(1)), m.end()
    found.append((current, start, len(text)))
    return [s for s in found if text[s[1] : s[2]].strip()]


# A sentence ends at . ! ? followed by white space or by a capital letter ("apex.There"), not inside a
# number ("1.5 cm"); a line break ends one too (reports are often lists).
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\.(?=[A-Z][a-z])|\n")


def sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each sentence of text[start:end], without surrounding white space."""
    end = len(text) if end is None else end
    spans, begin = [], start
    for m in _SENTENCE_END.finditer(text, start, end):
        spans.append((begin, m.end()))
        begin = m.end()
    spans.append((begin, end))
    trimmed = []
    for s, e in spans:
        chunk = text[s:e]
        s, e = s + len(chunk) - len(chunk.lstrip()), e - (len(chunk) - len(chunk.rstrip()))
        if any(c.isalpha() for c in text[s:e]):
            trimmed.append((s, e))
    return trimmed


def _cues(text: str, start: int, end: int) -> list[_Cue]:
    """The cues of a sentence. Where cues of different kinds overlap the longest wins, then the earlier kind
    in pseudo, uncertainty, negation: "not" inside "cannot be excluded" or "no change in" is no negation, and
    "suggest" inside "no opacity to suggest" no uncertainty. Cues of one kind may share words ("cannot be
    excluded" is a pre and a post cue)."""
    order = {kind: i for i, kind in enumerate(_CUE_VALUE)}
    matches = sorted(
        (
            _Cue(kind, direction, m.start(), m.end())
            for kind, patterns in _rules().cues.items()
            for direction, pattern in patterns
            for m in pattern.finditer(text, start, end)
        ),
        key=lambda c: (c.start - c.end, order[c.kind]),
    )
    found: list[_Cue] = []
    for cue in matches:
        if not any(cue.start < c.end and c.start < cue.end and c.kind != cue.kind for c in found):
            found.append(cue)
    return found


_WORD = re.compile(r"\w+")


def _classify(text: str, start: int, end: int, cues: list[_Cue], stops: list[int]) -> _Cue | None:
    """The cue that decides the mention text[start:end], or None (present). The nearest pre cue that starts
    before its end ("no effusion", "heart is not enlarged", "no effusion to suggest") and the nearest post cue
    after it count when no terminator stands between; uncertainty wins over negation."""
    pre = [
        c
        for c in cues
        if c.direction == "pre"
        and c.start < end
        and not (c.start >= start and c.end > end)
        and not any(c.end <= s < start for s in stops)
    ]
    post = [
        c
        for c in cues
        if c.direction == "post"
        and c.start >= end
        and not any(end <= s < c.start for s in stops)
        and not any(p.direction == "pre" and end <= p.start < c.start for p in cues)
        and len(_WORD.findall(text, end, c.start)) <= _rules().post_scope_words
    ]
    nearest = [
        max(pre, key=lambda c: (c.start, -c.end), default=None),
        min(post, key=lambda c: c.start, default=None),
    ]
    for kind in ("uncertainty", "negation"):
        for c in nearest:
            if c is not None and c.kind == kind:
                return c
    return None


def _term_matches(finding: str, text: str, start: int, end: int) -> list[re.Match]:
    rules = _rules()
    exclude = rules.exclude[finding]
    excluded = [m.span() for m in exclude.finditer(text, start, end)] if exclude else []
    return [
        m
        for m in rules.terms[finding].finditer(text, start, end)
        if not any(a <= m.start() and m.end() <= b for a, b in excluded)
    ]


def _sentence_mentions(text: str, section: str, s: int, e: int) -> list[Mention]:
    rules = _rules()
    terms = [(f, m) for f in FINDINGS for m in _term_matches(f, text, s, e)]
    absent = [(f, m) for f in FINDINGS if rules.absent[f] for m in rules.absent[f].finditer(text, s, e)]
    if not terms and not absent:
        return []  # most sentences name no finding: no cue search for them
    cues = _cues(text, s, e)
    stops = [m.start() for m in rules.terminators.finditer(text, s, e)]
    found = []
    for finding, m in terms:
        cue = _classify(text, m.start(), m.end(), cues, stops)
        value = PRESENT if cue is None else _CUE_VALUE[cue.kind]
        said = text[cue.start : cue.end] if cue is not None and value != PRESENT else None
        found.append(Mention(finding, value, section, m.span(), (s, e), m.group(), text[s:e], said))
    for finding, m in absent:
        found.append(Mention(finding, NEGATED, section, m.span(), (s, e), m.group(), text[s:e], m.group()))
    return found


def has_read_text(parts: Sequence[tuple[str, str]]) -> bool:
    """Whether any read section of the parts holds a word (an empty report, or one with an indication
    only, gives nothing to label)."""
    return any(
        is_read(section) and any(c.isalnum() for c in text[start:end])
        for name, text in parts
        for section, start, end in sections(text, name)
    )


def find_mentions(text: str, name: str = "") -> list[Mention]:
    """Every mention of a finding in the read sections of the text, in text order. `name` names the section
    of the text before any header (a column name, say), and decides whether that part is read."""
    found = []
    for section, start, end in sections(text, name):
        if is_read(section):
            for s, e in sentences(text, start, end):
                found.extend(_sentence_mentions(text, section, s, e))
    return sorted(found, key=lambda m: m.span)


def decide(mentions: Iterable[Mention]) -> dict[str, Mention]:
    """Per finding, the mention that gives the report's label: the first present one, else the first
    uncertain one, else the first negated one."""
    best: dict[str, Mention] = {}
    for m in mentions:
        if m.finding not in best or _PRECEDENCE[m.value] > _PRECEDENCE[best[m.finding].value]:
            best[m.finding] = m
    return best


def label(text: str) -> dict[str, Mention]:
    """{finding: deciding Mention} for the findings the report names; see `values` for a row of labels."""
    return decide(find_mentions(text))


def label_parts(parts: Sequence[tuple[str, str]]) -> dict[str, Mention]:
    """As `label`, for a report held in several named parts (columns): [("findings", ...), ...]. A part
    named like a section that is not read (indication, history, ...) is skipped."""
    return decide(m for name, text in parts for m in find_mentions(text, name))


def values(labels: dict[str, Mention]) -> dict[str, int | None]:
    """The row of a report: 1 / 0 / -1 per finding (None when not mentioned), and "No Finding" 1 when no
    finding is present or uncertain (else None)."""
    row: dict[str, int | None] = {f: (labels[f].value if f in labels else None) for f in FINDINGS}
    row[NO_FINDING] = None if any(v in (PRESENT, UNCERTAIN) for v in row.values()) else 1
    return row


def keyword_values(parts: Sequence[tuple[str, str]]) -> dict[str, int | None]:
    """The baseline: a finding is present wherever one of its terms occurs in a read section, negated or
    not (the same terms, exclusions and sections as the labeller)."""
    row: dict[str, int | None] = dict.fromkeys(FINDINGS)
    for name, text in parts:
        for section, start, end in sections(text, name):
            if is_read(section):
                for finding in FINDINGS:
                    if _term_matches(finding, text, start, end):
                        row[finding] = PRESENT
    row[NO_FINDING] = None if any(v == PRESENT for v in row.values()) else 1
    return row
