"""The report consistency check by hand: each kind of flag, negation, uncertainty (neither asserted nor negated,
but mentioned), the reader's verdicts, and reports that are not checked (no text, not English)."""

import pytest

from services import report_check as rc

P = {"Effusion": 0.80, "Cardiomegaly": 0.10, "Pneumothorax": 0.70, "Nodule": 0.20, "Atelectasis": 0.05}
T = dict.fromkeys(P, 0.5)  # positive: Effusion, Pneumothorax


def flags(text, verdicts=None):
    result = rc.check(text, P, T, verdicts)
    assert result.skipped is None
    return {(f.finding, f.kind, f.report_text) for f in result.flags}


def test_a_negated_finding_the_ai_scores_positive_is_flagged_unless_the_reader_rejected_it():
    assert flags("No pleural effusion.") == {("Effusion", "negated_but_ai_positive", "No pleural effusion.")}
    assert flags("No pleural effusion.", {"Effusion": "accept"}) == {
        ("Effusion", "negated_but_ai_positive", "No pleural effusion.")}  # fmt: skip
    assert flags("No pleural effusion.", {"Effusion": "uncertain"}) != set()
    assert flags("No pleural effusion.", {"Effusion": "reject"}) == set()


def test_an_omitted_finding_is_flagged_only_when_the_ai_scores_it_positive_and_the_reader_accepted_it():
    assert flags("Lungs are clear.") == set()
    assert flags("Lungs are clear.", {"Pneumothorax": "accept"}) == {("Pneumothorax", "omitted_but_ai_positive", None)}
    assert flags("Lungs are clear.", {"Nodule": "accept"}) == set()  # the AI scores it negative
    assert flags("Small right pneumothorax.", {"Pneumothorax": "accept"}) == set()


def test_an_asserted_finding_is_flagged_when_the_ai_scores_it_negative_unaccepted_or_when_rejected():
    assert flags("The heart is enlarged.") == {("Cardiomegaly", "asserted_but_ai_negative", "The heart is enlarged.")}
    assert flags("The heart is enlarged.", {"Cardiomegaly": "accept"}) == set()  # the reader agrees
    assert flags("Left pleural effusion.") == set()  # the AI agrees
    assert flags("Left pleural effusion.", {"Effusion": "reject"}) == {
        ("Effusion", "asserted_but_ai_negative", "Left pleural effusion.")}  # fmt: skip


def test_uncertain_mentions_are_neither_asserted_nor_negated_but_count_as_mentioned():
    assert flags("Possible small effusion.") == set()
    assert flags("Cannot exclude cardiomegaly.") == set()
    assert flags("Pneumothorax cannot be excluded.", {"Pneumothorax": "accept"}) == set()  # not omitted


def test_findings_the_ai_did_not_score_are_not_flagged():
    assert flags("No hernia. Emphysema.") == set()


@pytest.mark.parametrize(("text", "reason"), [
    ("", rc.NO_TEXT), ("   \n ", rc.NO_TEXT), ("-- 12/03 --", rc.NO_TEXT),
    ("Kein Pleuraerguss. Herz nicht vergrössert.", rc.NOT_ENGLISH),
    ("Pas d'épanchement pleural, silhouette cardiaque de taille normale.", rc.NOT_ENGLISH),
])  # fmt: skip
def test_reports_without_text_or_not_in_english_are_not_checked_and_say_why(text, reason):
    result = rc.check(text, P, T, {"Pneumothorax": "accept"})
    assert (result.flags, result.skipped) == ([], reason)


def test_a_long_text_without_english_words_or_findings_is_not_checked():
    text = " ".join(["Thoraxaufnahme unauffällig ohne pathologischen Befund"] * 5) + " the"
    assert rc.check(text, P, T).skipped == rc.NOT_ENGLISH


def test_acknowledgements_carry_over_to_the_same_flag_of_a_new_check():
    new = rc.check("No pleural effusion. The heart is enlarged.", P, T)
    earlier = [{"finding": "Effusion", "kind": "negated_but_ai_positive", "acknowledged": True, "note": "tiny"}]
    carried = {f.finding: (f.acknowledged, f.note) for f in rc.carry_acknowledgements(new, earlier).flags}
    assert carried == {"Effusion": (True, "tiny"), "Cardiomegaly": (False, None)}


def test_sentences_link_to_the_heatmaps_they_name_and_to_the_ctr_lines():
    from services import reporting
    from services.analysis import Analysis

    result = Analysis(
        anatomy={"ctr": {"ratio": 0.56}, "problems": []},
        findings={"probabilities": {"Cardiomegaly": 0.9, "Effusion": 0.8}},
    )
    draft = reporting.draft(result, {("finding", "Cardiomegaly"), ("finding", "Effusion"), ("ctr", "ctr")}, "PA")
    links = rc.sentence_links(draft, {"Cardiomegaly", "Effusion", "Nodule"}, ctr_available=True)
    by_sentence = {link.sentence: (link.findings, link.ctr) for link in links}
    assert by_sentence["Pleura: Pleural effusion."] == (("Effusion",), False)
    assert by_sentence["Heart and mediastinum: The heart is enlarged."] == (("Cardiomegaly",), False)
    (ctr,) = [s for s, (_, is_ctr) in by_sentence.items() if is_ctr]
    assert ctr.startswith("Cardiothoracic ratio 0.56")
    assert by_sentence["Pleural effusion; The heart is enlarged"] == (("Effusion", "Cardiomegaly"), False)
    assert [link.span for link in links] == sorted(link.span for link in links)
    assert all(draft[link.span[0] : link.span[1]].strip() == link.sentence for link in links)


def test_negated_findings_link_too_but_not_findings_without_a_heatmap_nor_unread_sections():
    text = "INDICATION: nodule?\nFINDINGS: No pneumothorax. Small nodule. CTR 0.4.\nIMPRESSION: Normal."
    links = rc.sentence_links(text, {"Pneumothorax"}, ctr_available=False)
    assert [(link.sentence, link.findings, link.ctr) for link in links] == [("No pneumothorax.", ("Pneumothorax",), False)]
    assert [link.ctr for link in rc.sentence_links(text, set(), ctr_available=True)] == [True]
    assert rc.sentence_links("", {"Pneumothorax"}, True) == []
