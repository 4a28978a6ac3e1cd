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


def test_a_network_without_the_layer_says_so_in_one_sentence(app_ctx, shared_data, tmp_path, monkeypatch):
    import dataclasses
    import os

    from inference import embeddings
    from services import auth, eval_sets
    from tests.conftest import nih_subset_csv

    def refuse(model, layer, name="this network"):  # a classifier whose network has no penultimate layer
        raise embeddings.UnsupportedModel(f"the {layer} layer cannot be read from {name} (a Other network)")

    nih = shared_data / "nih"
    monkeypatch.setenv("CXR_REVIEW_DATASET_ROOTS", os.pathsep.join([str(nih), str(tmp_path)]))
    labels = nih_subset_csv(nih, ["00000075_000.png", "00000100_000.png"], tmp_path / "two.csv")
    roots = (nih.resolve(), tmp_path.resolve())
    ctx = dataclasses.replace(app_ctx, settings=dataclasses.replace(app_ctx.settings, dataset_roots=roots))
    auth.add_user(ctx.engine, "res", "researcher", "a-long-password-1")
    info = eval_sets.from_folder(ctx, "two", nih / "images", labels, 1).info
    monkeypatch.setattr(embeddings, "check_layer", refuse)
    at = _tab(info.id, "cxr15_mobilenetv3@1.0.0")
    assert not at.exception
    assert [e.value for e in at.error] == ["No map: The penultimate layer cannot be read from cxr15_mobilenetv3@1.0.0 "
                                           "(a Other network)."]  # fmt: skip
    assert at.session_state["selected"] == []
