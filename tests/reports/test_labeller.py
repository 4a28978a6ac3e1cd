"""The labeller on hand-written report sentences: negation, uncertainty, their scope, sections, spans."""

import pytest

from reports import labeller
from reports.labeller import NEGATED, NO_FINDING, PRESENT, UNCERTAIN


def value(text: str, finding: str) -> int | None:
    found = labeller.label(text)
    return found[finding].value if finding in found else None


@pytest.mark.parametrize(
    "text, finding",
    [
        ("No pneumothorax.", "Pneumothorax"),
        ("There is no evidence of pleural effusion.", "Effusion"),
        ("No pneumothorax, pleural effusion, or focal airspace consolidation.", "Consolidation"),
        ("Pneumothorax is not seen.", "Pneumothorax"),
        ("A pleural effusion is not identified on the lateral view.", "Effusion"),
        ("Clear lungs without edema.", "Edema"),
        ("The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.", "Effusion"),
        ("Interval resolution of the right lower lobe pneumonia.", "Pneumonia"),
        ("The left effusion has resolved.", "Effusion"),
        ("The heart is not enlarged.", "Cardiomegaly"),
        ("Normal heart size.", "Cardiomegaly"),
        ("Heart size is at the upper limits of normal.", "Cardiomegaly"),
        ("Pneumonia is unlikely.", "Pneumonia"),
        # the absent sign is what would have suggested the finding
        ("There is no focal air space opacity to suggest a pneumonia.", "Pneumonia"),
        ("No evidence of pneumothorax is seen.", "Pneumothorax"),
        # a redundant double negative in dictation is an emphatic negative, not a positive
        ("No pleural effusion is not seen.", "Effusion"),
    ],
)
def test_negated(text, finding):
    assert value(text, finding) == NEGATED


@pytest.mark.parametrize(
    "text, finding",
    [
        ("Possible left lower lobe pneumonia.", "Pneumonia"),
        ("Left base opacity which may represent atelectasis.", "Atelectasis"),
        ("Cannot exclude a small left pleural effusion.", "Effusion"),
        # double negation: "not" inside "cannot be excluded" / "not excluded" means maybe, not no
        ("Early pneumonia cannot be excluded.", "Pneumonia"),
        ("A small effusion is not excluded.", "Effusion"),
        ("Streaky opacity, atelectasis versus scarring.", "Atelectasis"),
        ("Findings are concerning for pneumonia.", "Pneumonia"),
        ("Small bilateral pleural effusions suspected.", "Effusion"),
    ],
)
def test_uncertain(text, finding):
    assert value(text, finding) == UNCERTAIN


@pytest.mark.parametrize(
    "text, finding",
    [
        ("Small left pleural effusion.", "Effusion"),
        ("Mild cardiomegaly.", "Cardiomegaly"),
        ("The cardiac silhouette is mildly enlarged.", "Cardiomegaly"),
        ("Borderline heart size.", "Cardiomegaly"),
        # "no change in" looks like a negation; the effusion is still there
        ("No change in the small left pleural effusion.", "Effusion"),
        ("No significant interval change in the right upper lobe nodule.", "Nodule"),
        ("Stable, unchanged left basilar atelectasis.", "Atelectasis"),
        # a favoured reading is reported as present
        ("Probable right lower lobe pneumonia.", "Pneumonia"),
        ("Large hiatal hernia.", "Hernia"),
        ("Biapical pleural thickening.", "Pleural_Thickening"),
    ],
)
def test_present(text, finding):
    assert value(text, finding) == PRESENT


@pytest.mark.parametrize(
    "text, expected",
    [
        # a negation's scope ends at "but" / "however" / ";" or at another cue
        ("No pneumothorax but a small left effusion.", {"Pneumothorax": NEGATED, "Effusion": PRESENT}),
        ("No pneumothorax, however there is a small effusion.", {"Pneumothorax": NEGATED, "Effusion": PRESENT}),
        ("No effusion; patchy left basilar atelectasis.", {"Effusion": NEGATED, "Atelectasis": PRESENT}),
        ("No pneumothorax, possible pneumonia.", {"Pneumothorax": NEGATED, "Pneumonia": UNCERTAIN}),
        ("No effusion, probable left basilar atelectasis.", {"Effusion": NEGATED, "Atelectasis": PRESENT}),
        ("Small effusion, no pneumothorax.", {"Effusion": PRESENT, "Pneumothorax": NEGATED}),
        # a post cue reaches back over a list, not past a pre cue of another clause
        ("Pneumothorax, effusion and consolidation are not seen.",
         {"Pneumothorax": NEGATED, "Effusion": NEGATED, "Consolidation": NEGATED}),
        ("Mild cardiomegaly without edema, effusion is not seen.",
         {"Cardiomegaly": PRESENT, "Edema": NEGATED, "Effusion": NEGATED}),
    ],
)  # fmt: skip
def test_scope(text, expected):
    found = labeller.label(text)
    assert {f: m.value for f, m in found.items()} == expected


def test_terms_that_name_something_else_are_not_mentions():
    assert labeller.label("Subcutaneous emphysema in the chest wall. Small pericardial effusion.") == {}
    assert value("Nodular opacity in the right upper lobe.", "Nodule") is None  # an opacity's shape, see data


def test_sections_indication_is_not_read_and_spans_point_into_the_text():
    text = "INDICATION: Rule out pneumonia.\nFINDINGS: No pleural effusion.\nIMPRESSION: Mild cardiomegaly."
    found = labeller.label(text)
    assert set(found) == {"Effusion", "Cardiomegaly"}  # the question asked about pneumonia is no finding
    effusion, heart = found["Effusion"], found["Cardiomegaly"]
    assert (effusion.section, effusion.value, effusion.cue) == ("findings", NEGATED, "No")
    assert text[slice(*effusion.span)] == "effusion"
    assert text[slice(*effusion.sentence_span)] == effusion.sentence == "No pleural effusion."
    assert (heart.section, heart.value, text[slice(*heart.span)]) == ("impression", PRESENT, "cardiomegaly")


def test_findings_and_impression_together_present_outweighs_uncertain_and_negated():
    parts = [("findings", "Possible small left effusion. No pneumothorax."),
             ("impression", "Small left pleural effusion. No pneumothorax.")]  # fmt: skip
    found = labeller.label_parts(parts)
    assert (found["Effusion"].value, found["Effusion"].section) == (PRESENT, "impression")
    assert found["Pneumothorax"].value == NEGATED
    # spans of label_parts point into the part's own text
    assert parts[1][1][slice(*found["Effusion"].span)] == "effusion"
    # a part named like a section that is not read is skipped
    assert labeller.label_parts([("indication", "pneumonia"), ("findings", "Clear lungs.")]) == {}
    # a mention in the findings stands when the impression says nothing of it
    assert labeller.label_parts([("findings", "Small left effusion."),
                                 ("impression", "No acute cardiopulmonary process.")])["Effusion"].value == PRESENT  # fmt: skip


def test_every_mention_is_kept_for_tracing():
    mentions = labeller.find_mentions("Possible small effusion. Small left pleural effusion.")
    assert [(m.finding, m.value, m.sentence) for m in mentions] == [
        ("Effusion", UNCERTAIN, "Possible small effusion."),
        ("Effusion", PRESENT, "Small left pleural effusion."),
    ]


def test_no_finding_only_when_nothing_is_present_or_uncertain():
    normal = labeller.values(labeller.label("No pneumothorax or effusion. Normal heart size. Clear lungs."))
    assert normal[NO_FINDING] == 1
    assert (normal["Pneumothorax"], normal["Effusion"], normal["Cardiomegaly"], normal["Edema"]) == (0, 0, 0, None)
    assert labeller.values(labeller.label("No acute cardiopulmonary abnormality."))[NO_FINDING] == 1
    assert labeller.values(labeller.label("Possible pneumonia. No effusion."))[NO_FINDING] is None
    assert labeller.values(labeller.label("Small effusion."))[NO_FINDING] is None
    assert list(labeller.values({})) == list(labeller.COLUMNS)


def test_keyword_baseline_ignores_negation():
    row = labeller.keyword_values([("findings", "No pneumothorax. Possible pneumonia.")])
    assert (row["Pneumothorax"], row["Pneumonia"], row["Effusion"], row[NO_FINDING]) == (1, 1, None, None)
