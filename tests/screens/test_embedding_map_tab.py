"""The embedding-map tab (screens/_embedding_map.py) through AppTest: where there can be no map it says why in
one sentence, without a traceback, and selects nothing. (The map itself, a box selection and a cluster are
checked in Chromium: tests/e2e/test_embedding_map.py.)"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest


def _tab(set_id: int, ref: str):
    def script(set_id: int, ref: str):
        import streamlit as st

        from screens import _deps
        from screens._embedding_map import render

        st.session_state["selected"] = render(_deps.ctx(), set_id=set_id, ref=ref, finding="Effusion",
                                              threshold=0.5, key="m")  # fmt: skip

    return AppTest.from_function(script, kwargs={"set_id": set_id, "ref": ref}, default_timeout=120).run()


@pytest.mark.parametrize(("set_id", "ref", "message"), [
    (99, "cxr15_mobilenetv3@1.0.0", "No map: Evaluation set 99 does not exist."),
    (1, "anatomy_unet_jsrt@1.0.0", "No map: The map needs a classification model, and anatomy_unet_jsrt@1.0.0 "
                                   "is a segmentation model."),
])  # fmt: skip
def test_no_map_says_why(app_ctx, set_id, ref, message):
    at = _tab(set_id, ref)
    assert not at.exception
    assert [e.value for e in at.error] == [message]
    assert at.session_state["selected"] == []
    assert at.radio(key="m_method").options == ["UMAP", "t-SNE"]
