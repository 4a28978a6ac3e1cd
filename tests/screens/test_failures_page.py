"""The Failure cases page through AppTest, on a real SQLite file, real NIH images and the real classifier: a set
without a run says so, the operating point in force is named with its source and the model's provenance, a
what-if threshold moves images in and out of the false-negative gallery, and a finding without positives says
so instead of showing an empty gallery."""

from __future__ import annotations

import csv
import dataclasses
import os

import pytest

from services import auth, eval_sets
from tests.conftest import finished_run, nih_subset_csv, sign_in_through_the_form

MODEL = "cxr15_mobilenetv3@1.0.0"
FILES = ["00000075_000.png", "00000100_000.png", "00000211_000.png", "00000550_000.png", "00000797_000.png"]
PASSWORD = "res-password-long"


@pytest.fixture
def world(app_ctx, shared_data, tmp_path, monkeypatch):
    nih = shared_data / "nih"
    monkeypatch.setenv("CXR_REVIEW_DATASET_ROOTS", os.pathsep.join([str(nih), str(tmp_path)]))
    roots = (nih.resolve(), tmp_path.resolve())
    ctx = dataclasses.replace(app_ctx, settings=dataclasses.replace(app_ctx.settings, dataset_roots=roots))
    auth.add_user(ctx.engine, "res", "researcher", PASSWORD)
    labels = nih_subset_csv(nih, FILES, tmp_path / "subset.csv")
    info = eval_sets.from_folder(ctx, "five", nih / "images", labels, 1).info
    with open(labels, newline="") as fh:
        named = [r["Finding Labels"].split("|") for r in csv.DictReader(fh)]
    positives = {f: sum(f in n for n in named) for f in info.findings}
    return ctx, info, positives


def _page():
    return sign_in_through_the_form("res", PASSWORD).switch_page("screens/failures.py").run()


def _texts(at) -> str:
    return "\n".join(m.value for m in [*at.markdown, *at.caption, *at.warning, *at.info, *at.error])


def test_the_page_says_what_is_missing_and_moves_images_with_a_what_if_threshold(world):
    from inference.registry import Registry
    from inference.runner import Runner

    ctx, info, positives = world
    at = _page()
    assert not at.exception and at.title[0].value == "Failure cases"
    assert f"{info.label} has no finished run" in _texts(at)

    runner = Runner(Registry(ctx.settings.models_dir), "cpu")
    finished_run(ctx, runner, info.id, MODEL)
    at = _page()
    assert not at.exception
    text = _texts(at)
    assert "Research use only" in text and "(in force: model defaults)" in text
    assert f"weights sha256 {runner.registry.resolve(MODEL).weights_sha256}" in text

    finding = next(f for f in info.findings if positives[f] >= 2 and f != "No Finding")
    at.selectbox(key="fc_finding").select(finding).run()
    at.toggle(key="fc_what_if").set_value(True).run()
    n = positives[finding]
    at.number_input(key=f"fc_thr_{MODEL}_{finding}").set_value(1.0).run()
    assert f"**{n}** false negative(s) of {n} positives" in _texts(at)
    assert sum(b.label == "Similar cases" for b in at.button) == n  # one tile each
    at.number_input(key=f"fc_thr_{MODEL}_{finding}").set_value(0.0).run()
    assert f"**0** false negative(s) of {n} positives" in _texts(at)
    assert "what-if; in force:" in _texts(at)
    at.number_input(key=f"fc_thr_{MODEL}_{finding}").set_value(0.0036).run()  # finer than a slider's steps
    assert "Operating point **0.0036**" in _texts(at)

    none = next(f for f in info.findings if positives[f] == 0)
    at.selectbox(key="fc_finding").select(none).run()
    assert not at.exception
    assert f"No positive for {none} among these images: there is no false negative to show." in _texts(at)


def test_a_tile_is_made_again_when_the_weights_of_the_version_change(monkeypatch):
    # new weights under the same id@version must not show the old heatmap for up to an hour
    from types import SimpleNamespace

    from screens import _deps
    from services import failure_cases

    made = []

    def tile(ctx, runner, spec, info, item, finding):
        made.append(item.id)
        return f"tile {len(made)}"

    monkeypatch.setattr(_deps, "ctx", lambda: None)
    monkeypatch.setattr(_deps, "runner", lambda: None)
    monkeypatch.setattr(_deps, "registry", lambda: SimpleNamespace(resolve=lambda ref: ref))
    monkeypatch.setattr(eval_sets, "items", lambda ctx, set_id: [SimpleNamespace(id=7)])
    monkeypatch.setattr(eval_sets, "get", lambda ctx, set_id: None)
    monkeypatch.setattr(failure_cases, "tile", tile)
    _deps.failure_tile.clear()
    try:
        first = _deps.failure_tile(1, 7, MODEL, "a" * 64, "Effusion")
        assert _deps.failure_tile(1, 7, MODEL, "a" * 64, "Effusion") == first  # the same weights: cached
        assert _deps.failure_tile(1, 7, MODEL, "b" * 64, "Effusion") != first  # new weights: made again
        assert made == [7, 7]
    finally:
        _deps.failure_tile.clear()
