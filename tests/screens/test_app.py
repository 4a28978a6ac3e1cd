"""Page logic through Streamlit's AppTest: the sign-in gate, roles, worklist, import results, viewer."""
import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from services import auth, importer
from tests.conftest import sign_in_through_the_form

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def env(app_ctx):
    auth.add_user(app_ctx.engine, "rad", "radiologist", "radiologist-pw")
    auth.add_user(app_ctx.engine, "boss", "admin", "admin-password")
    auth.add_user(app_ctx.engine, "res", "researcher", "researcher-pw")
    return app_ctx


def signed_in(username, password):
    return sign_in_through_the_form(username, password)


def worklist_table(at) -> pd.DataFrame:
    """The worklist's table as the page sent it (screens/_pick_table.py): its columns and text cells."""
    (table,) = [e.proto for e in at.get("bidi_component") if e.proto.component_name == "cxr_pick_table"]
    data = json.loads(table.json)
    return pd.DataFrame(data["rows"], columns=data["columns"])


def test_without_a_session_only_the_sign_in_form_renders(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    assert len(at.dataframe) == 0 and not at.get("bidi_component") and len(at.sidebar.button) == 0
    assert not at.exception


def test_the_first_page_after_sign_in_waits_until_the_browser_stored_the_session_cookie(env, monkeypatch):
    # Without the wait, a reload in the moment before the cookie element had run showed the form again.
    from services import session_cookie

    monkeypatch.setattr(session_cookie, "_mounted", True)  # served through asgi.py, with the cookie endpoint
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="signin_username").input("rad")
    at.text_input(key="signin_password").input("radiologist-pw")
    at.button[0].click().run()
    assert [c.value for c in at.caption] == ["Signing in…"] and not at.dataframe and not at.sidebar.get("page_link")
    # The page's cookie element holds a one-time grant, never the token, and posts it to the app's endpoint, which
    # exchanges the grant for the token once.
    grant = at.session_state["session_cookie_grant"]
    (cookie,) = [e.proto for e in at.get("bidi_component") if e.proto.component_name == "cxr_session_cookie"]
    assert json.loads(cookie.json) == {"action": "set", "url": session_cookie.PATH, "grant": grant}
    assert grant != at.session_state["session_token"]
    assert session_cookie.redeem(grant)[0] == at.session_state["session_token"]
    assert session_cookie.redeem(grant) is None
    at.run()  # nothing moves until the browser confirms
    assert [c.value for c in at.caption] == ["Signing in…"]
    at.session_state["cxr_session_set"] = {"value": True}  # what the browser sends once the server set the cookie
    at.run()
    assert at.title[0].value == "Worklist" and "session_cookie_pending" not in at.session_state
    assert not at.exception


def test_a_cookie_the_browser_did_not_store_is_said_and_the_page_still_opens(env, monkeypatch):
    from services import session_cookie

    monkeypatch.setattr(session_cookie, "_mounted", True)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="signin_username").input("rad")
    at.text_input(key="signin_password").input("radiologist-pw")
    at.button[0].click().run()
    at.session_state["cxr_session_set"] = {"value": False}  # the endpoint refused, or the request failed
    at.run()
    assert at.title[0].value == "Worklist" and "session_cookie_pending" not in at.session_state
    assert "This browser did not store the sign-in cookie: a reload will ask you to sign in again." in [
        c.value for c in at.sidebar.caption
    ]
    assert not at.exception


def test_wrong_password_is_refused(env):
    at = signed_in("rad", "not-the-password")
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    assert len(at.dataframe) == 0 and not at.get("bidi_component")


def test_radiologist_sees_the_worklist_with_imported_studies(env, shared_data):
    list(importer.import_paths(env.engine, env.store, [shared_data / "dicom"], max_bytes=2**30))
    at = signed_in("rad", "radiologist-pw")
    assert not at.exception
    assert at.title[0].value == "Worklist"
    table = worklist_table(at)
    # the SIIM MONOCHROME1 variant is refused (it reuses its twin's SOP Instance UID)
    assert len(table) == 2 and set(table["Modality"]) == {"CR", "DX"}
    assert "2 studies ·" in at.caption[0].value


def test_the_worklist_shows_empty_cells_where_a_study_has_no_value(env, shared_data):
    # A PNG carries no patient ID, age, sex, view, modality, date or description, and nobody reviewed it yet:
    # those cells read "None".
    list(importer.import_paths(env.engine, env.store, [shared_data / "nih" / "images" / "00000075_000.png"], max_bytes=2**30))
    at = signed_in("rad", "radiologist-pw")
    table = worklist_table(at)
    assert len(table) == 1 and not table.isna().any().any() and "None" not in table.to_string()
    row = table.iloc[0]
    empty = ["Patient ID", "Age", "Sex", "View", "Modality", "Study date", "Description", "Reviewed by"]
    assert [row[c] for c in empty] == [""] * len(empty)
    assert (row["Images"], row["Status"]) == (1, "New")


def test_roles_only_reach_their_pages_and_a_refused_page_says_why(env):
    # A researcher sent to a page of another role (a typed URL, a bookmark) landed on the worklist silently.
    at = signed_in("res", "researcher-pw")
    for page, title in [("import_studies", "Import"), ("admin", "Users"), ("audit", "Audit"), ("annotate", "Annotate")]:
        at.switch_page(f"screens/{page}.py").run()
        assert not at.exception and at.title[0].value == "Worklist" and not at.get("file_uploader")
        assert [w.value for w in at.warning] == [f"Your role (researcher) may not open {title}; you are on the Worklist."]
        assert [link.label for link in at.sidebar.get("page_link")] == ["Worklist", "Viewer", "Labelling tasks", "Evaluation", "Threshold sets", "Failure cases", "Account"]
    at.switch_page("screens/worklist.py").run()  # said once, where it happened
    assert at.title[0].value == "Worklist" and not at.warning
    at = signed_in("boss", "admin-password")
    at.switch_page("screens/admin.py").run()
    assert at.title[0].value == "Users"
    assert {"rad", "boss", "res"} <= set(at.dataframe[0].value["user"])


def test_a_row_opened_in_the_worklist_opens_its_study_and_only_a_row_it_showed(env, shared_data):
    list(importer.import_paths(env.engine, env.store, [shared_data / "dicom"], max_bytes=2**30))
    at = signed_in("rad", "radiologist-pw")
    shown = at.session_state["wl_row_ids"]
    assert len(shown) == len(worklist_table(at)) == 2
    for forged in (2, -1, True, "0", None):  # what a browser might send besides an index of the rows it was shown
        at.session_state["wl_table"] = {"open": forged}
        at.run()
        assert not at.exception and at.title[0].value == "Worklist" and "study_id" not in at.session_state
    at.session_state["wl_table"] = {"open": 1}  # the table's trigger: the second row
    at.run()
    assert not at.exception and at.session_state["study_id"] == shown[1]
    assert at.query_params["study"] == str(shown[1]) and at.button(key="mark_reviewed")


def _table_data(at) -> dict:
    (table,) = [e.proto for e in at.get("bidi_component") if e.proto.component_name == "cxr_pick_table"]
    return json.loads(table.json)


def test_a_worklist_header_sorts_every_page_on_the_server_and_a_second_click_reverses(env, shared_data):
    list(importer.import_paths(env.engine, env.store, [shared_data / "dicom"], max_bytes=2**30))
    at = signed_in("rad", "radiologist-pw")
    data = _table_data(at)
    assert data["sorted_by"] == "Imported (UTC)" and data["descending"] and "Age" in data["sortable"]
    assert "Description" not in data["sortable"]  # no sort on the server for it: not offered
    for forged in ("Description", "<img src=x>", 3, None):  # a name the page did not offer changes nothing
        at.session_state["wl_table"] = {"sort": forged}
        at.run()
        assert not at.exception and at.selectbox(key="wl_sort").value == "Imported"
    at.session_state["wl_table"] = {"sort": "Age"}
    at.run()
    assert at.selectbox(key="wl_sort").value == "Age" and at.toggle(key="wl_desc").value is False
    ages = [int(a) for a in worklist_table(at)["Age"]]
    assert ages == sorted(ages) and _table_data(at)["sorted_by"] == "Age"
    at.session_state["wl_table"] = {"sort": "Age"}  # the same header again: the other way round
    at.run()
    assert at.toggle(key="wl_desc").value is True
    assert [int(a) for a in worklist_table(at)["Age"]] == sorted(ages, reverse=True)
    assert "study_id" not in at.session_state  # sorting opens nothing


def test_viewer_shows_the_study_header_and_marks_it_reviewed(env, shared_data):
    (r,) = importer.import_paths(
        env.engine, env.store, [shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"], max_bytes=2**30
    )
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert not at.exception
    assert "No Finding" in at.markdown[1].value or any("No Finding" in m.value for m in at.markdown)
    assert any("in review" in c.value for c in at.caption)
    at.button(key="mark_reviewed").click().run()
    assert any("reviewed** by rad" in c.value for c in at.caption)



def test_only_the_reviewer_or_an_admin_reopens_a_reviewed_study_and_the_study_is_in_the_url(env, shared_data):
    """A reviewed study is its radiologist's signed work: a colleague may not reopen it (the server refuses even a
    forged click), its reviewer or an admin may, and each change is audited. The open study is in the URL, so a
    reload (a new session with only the URL) opens it again."""
    from sqlalchemy import text

    from db import engine as dbe
    from services import studies
    from services.auth import SignedIn

    auth.add_user(env.engine, "rad2", "radiologist", "radiologist2-pw")
    (r,) = importer.import_paths(
        env.engine, env.store, [shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"], max_bytes=2**30
    )
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert at.query_params["study"] == str(r.study_id)
    at.button(key="mark_reviewed").click().run()

    other = signed_in("rad2", "radiologist2-pw")
    other.query_params["study"] = str(r.study_id)  # the link, in a new session: no study in its state
    other.switch_page("screens/review.py").run()
    assert not other.exception and any("reviewed** by rad" in c.value for c in other.caption)
    button = other.button(key="mark_reviewed")
    assert button.label == "Reopen study" and button.disabled
    with dbe.read(env.engine) as s:
        ids = dict(s.execute(text("SELECT username, id FROM users")).all())
    with pytest.raises(studies.ReviewRefused, match="rad marked this study reviewed: only they or an admin may reopen it"):
        studies.set_reviewed(env.engine, r.study_id, SignedIn(ids["rad2"], "rad2", "radiologist", False), False)
    studies.set_reviewed(env.engine, r.study_id, SignedIn(ids["boss"], "boss", "admin", False), False)
    with dbe.read(env.engine) as s:
        assert s.scalar(text("SELECT status FROM studies")) == "in_review"
        assert list(s.scalars(text("SELECT action FROM audit_events WHERE action LIKE 'study_%' ORDER BY id"))) == [
            "study_reviewed", "study_reopened"]  # fmt: skip


def test_the_viewer_shows_an_image_with_unusable_header_values_with_warnings_and_no_error(env, shared_data, tmp_path):
    import math

    import pydicom
    from sqlalchemy import update

    from db import engine as dbe
    from db.models import Image

    ds = pydicom.dcmread(shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm")
    ds.RescaleSlope, ds.PixelSpacing, ds.WindowCenter, ds.WindowWidth = "NaN", ["inf", "inf"], "NaN", "inf"
    bad = tmp_path / "bad_values.dcm"
    ds.save_as(bad)
    (r,) = importer.import_paths(env.engine, env.store, [bad], max_bytes=2**30)
    assert r.status == "imported" and len(r.warnings) == 3
    # An image imported before the checks existed kept its spacing: the viewer checks it again.
    dbe.write(env.engine, lambda s: s.execute(update(Image).values(pixel_spacing_row_mm=math.inf, pixel_spacing_col_mm=1e-300)))
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert not at.exception and not at.error
    shown = [w.value for w in at.warning]
    assert "No pixel spacing in this image: lengths are in pixels." in shown
    assert any(w.startswith("RescaleSlope") for w in shown) and any(w.startswith("WindowCenter") for w in shown)
    assert not any("inf" in m.value for m in at.markdown if "Pixel spacing" in m.value)


def test_the_ai_panel_says_when_an_image_is_stored_with_an_inverted_grey_scale(env, shared_data):
    # A real NIH sample image stored inverted (bright air, dark bone): the models' results on it are not valid.
    (r,) = importer.import_paths(
        env.engine, env.store, [shared_data / "nih" / "images" / "00017625_000.png"], max_bytes=2**30
    )
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert not at.error
    at.toggle(key=f"ai_on_{r.study_id}").set_value(True).run(timeout=180)
    assert not at.exception
    # The quality gate refuses it first, saying why; nothing else is shown.
    assert ["inverted grey scale" in e.value for e in at.error] == [True]
    assert "Quality gate: the AI does not read this image" in at.error[0].value
    assert any("Research use only" in m.value for m in at.markdown)
    assert not [s for s in at.selectbox if s.label == "Finding heatmap"]
    # A reader who overrides it (a reason is required) sees the results, under the anatomy check's warning.
    from db import engine as dbe
    from db import repo

    with dbe.read(env.engine) as s:
        image_id = repo.image_by_sop(s, r.sop_instance_uid).id
    assert at.button(key=f"gate_override_{image_id}").disabled
    at.text_input(key=f"gate_reason_{image_id}").input("looked at it: stored inverted, want the outlines").run()
    at.button(key=f"gate_override_{image_id}").click().run(timeout=180)
    assert not at.exception
    assert any("Quality gate overridden" in w.value for w in at.warning)
    assert any("inverted grey scale" in e.value and "anatomy model" in e.value for e in at.error)
    assert [s for s in at.selectbox if s.label == "Finding heatmap"]


def test_the_ctr_lines_are_labelled_in_mm_where_the_image_has_a_pixel_spacing(env, shared_data, tmp_path):
    # The lines read "heart … px" even where the header's pixel spacing (0.168 mm here) gives lengths in mm.
    import json
    import re

    import pydicom

    siim = shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
    ds = pydicom.dcmread(siim)
    del ds.PixelSpacing
    # Another instance of the same pixels (the same CTR lines), without spacing, in a study of its own.
    ds.SOPInstanceUID, ds.StudyInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "no_spacing.dcm")
    with_spacing, without = importer.import_paths(env.engine, env.store, [siim, tmp_path / "no_spacing.dcm"], max_bytes=2**30)
    widths = {}
    for r in (with_spacing, without):
        at = signed_in("rad", "radiologist-pw")
        at.session_state["study_id"] = r.study_id
        at.switch_page("screens/review.py").run()
        at.toggle(key=f"ai_on_{r.study_id}").set_value(True).run(timeout=180)
        at.checkbox(key=f"ai_ctr_{r.image_id}").check().run(timeout=60)
        assert not at.exception
        (canvas,) = [c for c in at.get("bidi_component") if c.proto.component_name == "cxr_canvas"]
        labels = [s["label"] for s in json.loads(canvas.proto.json)["shapes"]]
        heart, thorax = (re.fullmatch(r"(heart|thorax) (\d+) (mm|px).*", label).groups() for label in labels)
        widths[r.file] = heart, thorax
        captions = [c.value for c in at.caption]
        no_spacing = "The widths on the lines are in pixels: this image has no usable pixel spacing."
        assert (no_spacing in captions) == (r is without)
    (_, heart_mm, mm), (_, thorax_mm, _) = widths[str(siim)]
    (_, heart_px, px), (_, thorax_px, _) = widths[str(tmp_path / "no_spacing.dcm")]
    assert (mm, px) == ("mm", "px")
    assert (int(heart_mm), int(thorax_mm)) == (round(int(heart_px) * 0.168), round(int(thorax_px) * 0.168))


def test_an_open_tab_loses_its_session_at_the_next_action_when_it_ends_elsewhere(env):
    from db import accounts
    from db import engine as dbe
    from db.models import Role

    rad = auth.authenticate(env.engine, "rad", "radiologist-pw")

    def open_tab(token):  # a tab signed in earlier: its session state holds the user and the token
        at = AppTest.from_file(APP, default_timeout=60)
        at.session_state["signed_in"], at.session_state["session_token"] = rad, token
        return at.run()

    token, _ = auth.start_session(env.engine, rad)
    at = open_tab(token)
    assert at.title[0].value == "Worklist" and not at.warning
    auth.end_session(env.engine, token)  # e.g. signed out in another tab
    at = open_tab(token)
    assert [t.label for t in at.text_input] == ["User name", "Password"] and len(at.sidebar.button) == 0
    assert "Your session ended" in at.warning[0].value and "session_token" not in at.session_state
    # A role change applies at the next action, not at the next sign-in.
    token, _ = auth.start_session(env.engine, rad)
    dbe.write(env.engine, lambda s: setattr(accounts.get_user_by_name(s, "rad"), "role", Role.researcher))
    at = open_tab(token)
    assert at.session_state["signed_in"].role == "researcher"
    links = [link.label for link in at.sidebar.get("page_link")]
    assert links == ["Worklist", "Viewer", "Labelling tasks", "Evaluation", "Threshold sets", "Failure cases", "Account"]  # a researcher has no Import


def test_verdicts_written_before_items_existed_still_show_and_then_point_at_their_items(env, shared_data):
    """Results and verdicts stored before AI statements were items: the viewer stores the items on the first view
    (one write), shows the old verdicts where they belong (a verdict on the whole anatomy as its own row), and a
    quick verdict on an old one updates that row, which then points at its item."""
    from sqlalchemy import delete, func, select

    from db import accounts, repo
    from db import engine as dbe
    from db.models import Prediction, PredictionItem

    (r,) = importer.import_paths(
        env.engine, env.store, [shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"], max_bytes=2**30
    )
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    at.toggle(key=f"ai_on_{r.study_id}").set_value(True).run(timeout=180)  # the models run; items stored too
    assert not at.exception
    with dbe.read(env.engine) as s:
        reader = accounts.get_user_by_name(s, "rad").id
        image_id = repo.study_images(s, r.study_id)[0].id
        assert s.scalar(select(func.count()).select_from(PredictionItem)) > 0  # stored with the predictions
        model = {p.task: (p.model_id, p.model_version, p.weights_sha256) for p in s.scalars(select(Prediction))}
    top = _verdict_table(at)[0]["Item"]  # the highest-ranked finding, the first statement in focus
    old = [("finding", top, "classification", "accept", None, "seen before"),
           ("anatomy", "anatomy", "segmentation", "reject", "anatomy boundary wrong", "left clavicle"),
           ("ctr", "ctr", "segmentation", "uncertain", None, None)]  # fmt: skip

    def as_before_items(s):
        s.execute(delete(PredictionItem))
        for kind, key, task, decision, code, note in old:
            model_id, version, sha = model[task]
            repo.upsert_verdict(s, repo.VerdictIn(
                study_id=r.study_id, image_id=image_id, reader_id=reader, item_kind=kind, item_key=key,
                decision=decision, model_id=model_id, model_version=version, weights_sha256=sha,
                reason_code=code, reason_text=note,
            ))  # fmt: skip

    dbe.write(env.engine, as_before_items)
    at.run()
    assert not at.exception
    with dbe.read(env.engine) as s:
        items = {(i.kind, i.key): i.id for i in s.scalars(select(PredictionItem))}
    assert {("finding", top), ("anatomy", "lungs"), ("anatomy", "heart"), ("anatomy", "clavicles"), ("ctr", "ctr"),
            ("bone_suppression", "bone_suppression")} <= set(items)  # fmt: skip
    shown = {r["Item"]: (r["Kind"], r["Verdict"], r["Reason"], r["Note"]) for r in _verdict_table(at)}
    assert shown[top] == ("finding", "accept", "", "seen before")
    assert shown["anatomy"] == ("anatomy", "reject", "anatomy boundary wrong", "left clavicle")
    assert [shown[s][1] for s in ("lungs", "heart", "clavicles")] == ["", "", ""]
    assert shown["ctr"] == ("ctr", "uncertain", "", "")
    assert any(f"**{top}**" in m.value and "your verdict: **accept**" in m.value for m in at.markdown)

    at.button(key="quick_reject").click().run()
    assert not at.exception
    with dbe.read(env.engine) as s:
        rows = {(v.item_kind, v.item_key): (v.decision.value, v.reason_text, v.prediction_item_id)
                for v in repo.verdicts_of(s, image_id, reader)}  # fmt: skip
    assert len(rows) == 3  # the old row was updated, not a second one added
    assert rows[("finding", top)] == ("reject", "seen before", items[("finding", top)])
    assert rows[("anatomy", "anatomy")] == ("reject", "left clavicle", None)  # no item of its own any more
    assert {row["Item"]: row["Verdict"] for row in _verdict_table(at)}[top] == "reject"


def _verdict_table(at) -> list[dict]:
    """The rows of the viewer's verdict table (a data editor) as the reader sees them."""
    (table,) = [d.value for d in at.dataframe if "Verdict" in d.value.columns]
    return table.fillna("").to_dict("records")


def test_a_researcher_sees_every_readers_verdicts_and_annotations_with_who_and_when(env, shared_data):
    """The viewer shows a researcher who judged which AI statement and who annotated the image, and when; a
    radiologist sees only their own verdicts there."""
    from sqlalchemy import select

    from db import accounts, repo
    from db import engine as dbe
    from services import annotations, verdicts
    from services.auth import SignedIn

    (r,) = importer.import_paths(
        env.engine, env.store, [shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"], max_bytes=2**30
    )
    with dbe.read(env.engine) as s:
        rad = accounts.get_user_by_name(s, "rad").id
        boss = accounts.get_user_by_name(s, "boss").id
        image_id = repo.study_images(s, r.study_id)[0].id
    item = {"kind": "finding", "key": "Effusion", "model": {"id": "m", "version": "1.0", "weights_sha256": "0" * 64}}
    verdicts.save(env.engine, r.study_id, image_id, rad, [(item, "reject", "not seen", "clear angles")])
    annotations.save(env, SignedIn(boss, "boss", "admin", False), image_id, status="submitted",
                     labels={"Mass": "present", "Effusion": "absent"})  # fmt: skip
    at = signed_in("res", "researcher-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert not at.exception
    tables = [d.value for d in at.dataframe]
    judged = next(t for t in tables if "Verdict" in t.columns and "Reader" in t.columns)
    assert judged.iloc[0][["Reader", "Item", "Verdict", "Reason", "Note"]].tolist() == [
        "rad", "Effusion", "reject", "not seen", "clear angles"]  # fmt: skip
    assert judged.iloc[0]["When"].startswith("20")
    labels = next(t for t in tables if "Status" in t.columns and "Present" in t.columns)
    assert labels.iloc[0][["Reader", "Status", "Present"]].tolist() == ["boss", "submitted", "Mass"]
    with dbe.read(env.engine) as s:
        assert s.scalar(select(repo.Verdict.reader_id)) == rad

    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert not any("Reader" in d.value.columns for d in at.dataframe)


def test_the_ai_switch_stays_as_the_reader_left_it_in_a_new_session(env, shared_data):
    """A reload is a new session: the AI switch comes back as this reader left it (stored per reader), and another
    reader's choice is theirs."""
    (r,) = importer.import_paths(
        env.engine, env.store, [shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"], max_bytes=2**30
    )
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = r.study_id
    at.switch_page("screens/review.py").run()
    assert at.toggle(key=f"ai_on_{r.study_id}").value is False  # off until the reader turns it on
    at.toggle(key=f"ai_on_{r.study_id}").set_value(True).run(timeout=180)
    assert not at.exception

    again = signed_in("rad", "radiologist-pw")  # a reload: a new session, only the URL
    again.query_params["study"] = str(r.study_id)
    again.switch_page("screens/review.py").run(timeout=180)
    assert again.toggle(key=f"ai_on_{r.study_id}").value is True and not again.exception
    assert any("Research use only" in s.value for s in again.subheader)

    other = signed_in("boss", "admin-password")
    other.query_params["study"] = str(r.study_id)
    other.switch_page("screens/review.py").run()
    assert other.toggle(key=f"ai_on_{r.study_id}").value is False
