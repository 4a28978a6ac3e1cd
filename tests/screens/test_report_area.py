"""The viewer's report area through AppTest: the draft follows the verdicts until edited by hand, every save is a
version, "Regenerate from verdicts" asks first and keeps the text, the consistency check's flags (overlay,
acknowledgement), sign-off (final, locked) and an amendment."""

import json

import pytest
from sqlalchemy import select, text

from db import accounts, repo, report_versions
from db import engine as dbe
from db.models import AuditEvent, ReportStatus
from services import importer
from tests.screens.test_app import env, signed_in  # noqa: F401  (fixture)

IMAGE = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"  # the AI scores Atelectasis and Effusion positive


def _open(env, shared_data):  # noqa: F811
    (r,) = importer.import_paths(env.engine, env.store, [shared_data / "dicom" / IMAGE], max_bytes=2**30)
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    at.toggle(key=f"ai_on_{r.study_id}").set_value(True).run(timeout=240)
    assert not at.exception
    return at, r.study_id


def _versions(env, study_id):  # noqa: F811
    with dbe.read(env.engine) as s:
        rad = accounts.get_user_by_name(s, "rad").id
        return [(v.status, v.amendment, v.text, v.generated, report_versions.consistency_of(v))
                for v in report_versions.line(s, study_id, rad)]  # fmt: skip


def _editor(at, study_id):
    return at.text_area(key=f"report_text_{study_id}")


def test_the_draft_follows_an_accepted_finding_until_it_is_edited_by_hand(env, shared_data):  # noqa: F811
    at, sid = _open(env, shared_data)
    assert "No AI statement accepted yet." in _editor(at, sid).value
    at.button(key="quick_accept").click().run()  # the first statement in focus: Atelectasis, the top finding
    assert not at.exception
    assert "Atelectasis." in _editor(at, sid).value  # at once, without a new session or "Regenerate"
    _editor(at, sid).set_value("My own words.").run()
    assert any("Edited by hand" in c.value for c in at.caption)
    at.button(key="quick_accept").click().run()  # the next statement: the report stays as written
    assert _editor(at, sid).value == "My own words."


def test_versions_regenerate_flags_sign_and_amend(env, shared_data):  # noqa: F811
    at, sid = _open(env, shared_data)
    with dbe.read(env.engine) as s:
        image_id = repo.study_images(s, sid)[0].id
    at.button(key="quick_accept").click().run()  # Atelectasis accepted
    at.button(key=f"save_report_{sid}").click().run()
    assert not at.exception
    (v1,) = _versions(env, sid)
    assert v1[0] == ReportStatus.draft and v1[3] and "Atelectasis" in v1[2]

    # Hand-written text negating a finding the AI scores positive (Effusion) -> a flag on save
    words = "FINDINGS: Atelectasis at the left base. No pleural effusion.\nIMPRESSION: Left basal atelectasis."
    _editor(at, sid).set_value(words).run()
    at.button(key=f"save_report_{sid}").click().run()
    assert not at.exception
    versions = _versions(env, sid)
    assert len(versions) == 2 and versions[0][2] == v1[2]  # the first version is kept as it was
    flags = versions[1][4]["flags"]
    assert [(f["finding"], f["kind"], f["report_text"]) for f in flags] == [
        ("Effusion", "negated_but_ai_positive", "No pleural effusion.")]  # fmt: skip
    assert versions[1][4]["model"]["weights_sha256"]
    assert any("Effusion" in m.value and "negates" in m.value for m in at.markdown)

    # Its overlay button shows the finding's heatmap in the viewer
    at.button(key=f"report_overlay_{sid}_Effusion_negated_but_ai_positive").click().run()
    assert at.selectbox(key=f"ai_cam_{image_id}").value == "Effusion"

    # Regenerate asks first; "Keep my text" keeps it, "Replace" keeps it as a version
    at.button(key=f"regen_report_{sid}").click().run()
    assert any("Replace the text" in w.value for w in at.warning)
    at.button(key=f"regen_no_{sid}").click().run()
    assert _editor(at, sid).value == words and len(_versions(env, sid)) == 2
    _editor(at, sid).set_value(words + " Heart normal.").run()
    at.button(key=f"regen_report_{sid}").click().run()
    at.button(key=f"regen_yes_{sid}").click().run()
    assert not at.exception
    versions = _versions(env, sid)
    assert len(versions) == 3 and versions[2][2] == words + " Heart normal."  # the text was kept
    assert "Atelectasis." in _editor(at, sid).value and "Heart normal" not in _editor(at, sid).value
    _editor(at, sid).set_value(words).run()

    # Sign with a flag not acknowledged: asks; acknowledge it with a note and sign: final, locked
    at.button(key=f"save_report_{sid}").click().run()
    at.button(key=f"sign_report_{sid}").click().run()
    assert any("1 consistency flag is not acknowledged (Effusion)" in w.value for w in at.warning)
    assert _versions(env, sid)[-1][0] == ReportStatus.draft  # asked, not signed
    at.button(key=f"sign_no_{sid}").click().run()
    at.checkbox(key=f"report_ack_{sid}_Effusion_negated_but_ai_positive").check().run()
    at.text_input(key=f"report_note_{sid}_Effusion_negated_but_ai_positive").input("small, clinically irrelevant").run()
    at.button(key=f"sign_report_{sid}").click().run()
    assert not at.exception
    final = _versions(env, sid)[-1]
    assert final[0] == ReportStatus.final and not final[1] and final[2] == words
    (flag,) = final[4]["flags"]
    assert flag["acknowledged"] and flag["note"] == "small, clinically irrelevant"
    (signed,) = [t for t in at.text_area if t.label.startswith("Signed report")]
    assert signed.disabled and signed.value == words
    assert any("Signed by rad" in s.value and "locked" in s.value for s in at.success)
    with dbe.read(env.engine) as s:  # locked in the database too
        rad = accounts.get_user_by_name(s, "rad").id
        newest = report_versions.latest(s, sid, rad).id
    with pytest.raises(report_versions.ReportNotSaved, match="signed and locked"):
        dbe.write(env.engine, lambda s: report_versions.add(s, sid, rad, rad, "changed", parent_id=newest))

    # An amendment: a new final version with its reason
    at.text_area(key=f"report_amend_{sid}").set_value(words + " Addendum: small left effusion.").run()
    at.text_input(key=f"report_amend_reason_{sid}").input("effusion seen on review").run()
    at.button(key=f"report_amend_save_{sid}").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    last = _versions(env, sid)[-1]
    assert last[0] == ReportStatus.final and last[1] and "Addendum" in last[2]
    with dbe.read(env.engine) as s:
        actions = [a for a in s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)) if a.startswith("report_")]
        details = [json.loads(d) for d in s.scalars(select(AuditEvent.details).where(AuditEvent.action == "report_signed"))]
    assert actions == ["report_saved"] * 4 + ["report_signed", "report_amended"] and details[0]["unacknowledged"] == 0
    with pytest.raises(Exception, match="append-only"):
        dbe.write(env.engine, lambda s: s.execute(text("UPDATE report_versions SET text = 'x'")))
