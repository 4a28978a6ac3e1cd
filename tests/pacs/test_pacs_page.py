"""The Import page's PACS tab and the viewer's "Send to PACS" through Streamlit's AppTest, against the real Orthanc."""

from __future__ import annotations

import pytest

from db import audit
from db import engine as dbe
from services import auth
from tests.conftest import sign_in_through_the_form
from tests.pacs import orthanc_server
from tests.pacs.conftest import variant
from tests.servers import free_port

DX = "dicom/nih_dx_chest_1024_nofinding_nccid.dcm"


@pytest.fixture
def env(app_ctx, pacs, monkeypatch):
    for k, v in {"CXR_REVIEW_PACS_URL": pacs.dicomweb, "CXR_REVIEW_PACS_USER": orthanc_server.USER,
                 "CXR_REVIEW_PACS_PASSWORD": orthanc_server.PASSWORD}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    auth.add_user(app_ctx.engine, "ann", "annotator", "annotator-pw")
    auth.add_user(app_ctx.engine, "res", "researcher", "researcher-pw")
    return app_ctx


def _page(name, password):
    at = sign_in_through_the_form(name, password)
    return at.switch_page("screens/import_studies.py").run()


def test_search_pick_retrieve_and_the_report(env, pacs, shared_data, tmp_path):
    src = shared_data / DX
    ct = variant(src, tmp_path / "ct.dcm", Modality="CT", SeriesInstanceUID="1.2.826.0.1.3680043.8.498.11")
    pacs.store(src, ct)
    at = _page("ann", "annotator-pw")
    assert not at.exception
    assert any(pacs.dicomweb in c.value for c in at.caption)
    assert orthanc_server.PASSWORD not in str(at)  # nowhere on the page
    at.selectbox(key="pacs_modality").select("DX")
    at.button(key="pacs_search").click().run()
    assert not at.exception and not at.error
    (hit,) = at.session_state["pacs_hits"]
    at.multiselect(key="pacs_picked").select(hit["study_instance_uid"]).run()
    at.button(key="pacs_retrieve").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["The file was imported."]
    assert "1 imported · 0 duplicate · 0 rejected · 1 series skipped" in [m.value for m in at.markdown]
    rows = at.dataframe[-1].value
    assert list(rows["Result"]) == ["imported", "skipped (not CR or DX)"]
    assert "not CR or DX" in rows["Reason"].iloc[1]
    with dbe.read(env.engine) as s:
        actions = [r.action for r in audit.events(s, actions=("pacs_retrieve", "import_batch", "import"))]
    assert sorted(actions) == ["import", "import_batch", "pacs_retrieve"]


def test_a_pacs_error_is_one_clear_message(env, pacs, monkeypatch):
    monkeypatch.setenv("CXR_REVIEW_PACS_PASSWORD", "not-the-password")
    at = _page("ann", "annotator-pw")
    at.button(key="pacs_search").click().run()
    assert not at.exception
    (err,) = at.error
    assert err.value.startswith(
        f"The search failed: the PACS at {pacs.dicomweb} refused the user name or password"
    )
    assert "not-the-password" not in str(at) and "Traceback" not in str(at)


def test_roles_that_may_not_import_see_neither_the_tab_nor_send(env):
    at = _page("res", "researcher-pw")
    assert not at.tabs  # the page itself is refused
    assert "pacs_search" not in [b.key for b in at.button]


def _viewer(name, password, study_id):
    at = sign_in_through_the_form(name, password)
    at.session_state["study_id"] = study_id
    return at.switch_page("screens/review.py").run()


def test_send_to_pacs_in_the_viewer_only_for_importers_and_a_down_pacs_is_one_message(
    env, shared_data, monkeypatch
):
    import streamlit as st
    from sqlalchemy import text

    from services import annotations, importer
    from services.auth import SignedIn

    (r,) = importer.import_paths(env.engine, env.store, [shared_data / DX], max_bytes=2**30)
    at = _viewer("res", "researcher-pw", r.study_id)
    assert not at.exception and "send_to_pacs" not in [b.key for b in at.button]

    # A final version, so that nothing runs the models; then the PACS is stopped (nothing listens on its port).
    auth.add_user(env.engine, "boss", "admin", "boss-password-long")
    with dbe.read(env.engine) as s:
        boss_id = s.scalar(text("SELECT id FROM users WHERE username = 'boss'"))
    annotations.save(env, SignedIn(boss_id, "boss", "admin", False), r.image_id, status="final",
                     labels={"Effusion": "present"})  # fmt: skip
    port = free_port()
    monkeypatch.setenv("CXR_REVIEW_PACS_URL", f"http://127.0.0.1:{port}/dicom-web")
    st.cache_resource.clear()  # the app's context holds the settings it was built with
    at = _viewer("ann", "annotator-pw", r.study_id)
    at.button(key="send_to_pacs").click().run()
    assert not at.exception
    (err,) = at.error
    assert err.value.startswith(
        f"Not sent to the PACS: cannot reach the PACS at http://127.0.0.1:{port}/dicom-web"
    )
    with dbe.read(env.engine) as s:
        (row,) = audit.events(s, actions=("pacs_store",))
    assert '"error": "unreachable"' in row.details and row.actor == "ann"
