"""The Evaluation and Threshold sets pages through AppTest, on a real SQLite file, real NIH images and the real
classifier: a set made from a folder and a CSV (bad rows listed), a background run with its progress, the
metrics (AUC against scikit-learn, "not defined" for a finding without positives, subgroups, CSV downloads),
and a threshold set chosen at a target sensitivity, saved by a researcher and put in force by an admin."""

from __future__ import annotations

import csv
import dataclasses
import os
import time

import pytest
import streamlit as st
from sklearn.metrics import roc_auc_score

from services import auth, eval_metrics, eval_runs, eval_sets, threshold_sets
from tests.conftest import sign_in_through_the_form

MODEL, OTHER = "cxr15_mobilenetv3@1.0.0", "cxr14_mobilenetv3_multilabel@1.1.0"
FILES = ["00000075_000.png", "00000100_000.png", "00000211_000.png", "00000550_000.png", "00000797_000.png",
         "00000442_000.png", "00000404_000.png", "00000820_000.png"]  # fmt: skip
USERS = {"res": "researcher", "boss": "admin"}


def password(name: str) -> str:
    return f"{name}-password-long"


@pytest.fixture
def world(app_ctx, shared_data, tmp_path, monkeypatch):
    # The browser may name folders under the dataset roots only: the shared images and this test's labels.
    monkeypatch.setenv("CXR_REVIEW_DATASET_ROOTS", os.pathsep.join([str(shared_data / "nih"), str(tmp_path)]))
    # the same roots for the runs this test starts itself (they read a folder set's files only under them)
    roots = ((shared_data / "nih").resolve(), tmp_path.resolve())
    app_ctx = dataclasses.replace(app_ctx, settings=dataclasses.replace(app_ctx.settings, dataset_roots=roots))
    for name, role in USERS.items():
        auth.add_user(app_ctx.engine, name, role, password(name))
    nih = shared_data / "nih"
    with open(nih / "labels.csv", newline="") as fh:
        rows = {r["Image Index"]: r for r in csv.DictReader(fh)}
    out = tmp_path / "subset.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[FILES[0]]))
        w.writeheader()
        w.writerows([rows[f] for f in FILES])
        w.writerow(rows[FILES[0]] | {"Image Index": "gone.png"})
    return app_ctx, nih / "images", out


def page(name: str, screen: str):
    return sign_in_through_the_form(name, password(name)).switch_page(f"screens/{screen}.py").run()


def _wait_for_runs(ctx, set_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = eval_runs.runs_of(ctx, set_id)
        if runs and all(r.status in ("done", "failed") for r in runs):
            return runs
        time.sleep(0.3)
    raise TimeoutError(eval_runs.runs_of(ctx, set_id))


def test_a_researcher_makes_a_set_runs_a_model_and_reads_its_metrics(world, monkeypatch):
    ctx, folder, labels = world
    downloads = {}  # every CSV the page offers, by file name (st.download_button still runs)
    real = st.download_button

    def spy(label, data, file_name=None, *args, **kwargs):
        downloads[file_name] = data
        return real(label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", spy)
    at = page("res", "evaluation")
    assert not at.exception
    assert at.title[0].value == "Evaluation" and "Research use only" in at.caption[0].value
    at.text_input(key="ev_name").input("nih-8")
    at.text_input(key="ev_folder").input(str(folder))
    at.text_input(key="ev_csv").input(str(labels))
    at.button(key="ev_create").click().run()
    assert not at.exception and not at.error
    assert [s.value for s in at.success] == [
        "New version: nih-8 v1 (8 images, truth: labels CSV); 1 row(s) left out (listed below)."
    ]
    [info] = eval_sets.list_sets(ctx)
    assert info.report == [{"line": 10, "file": "gone.png", "reason": "image not found in the folder"}]
    at.multiselect(key="ev_models").set_value([MODEL, OTHER]).run()
    at.button(key="ev_run").click().run()
    assert [s.value for s in at.success] == [f"Started: {MODEL}, {OTHER} on nih-8 v1."]
    runs = _wait_for_runs(ctx, info.id)
    assert [(r.ref, r.status, r.n_done) for r in runs] == [(OTHER, "done", 8), (MODEL, "done", 8)]
    at.run()
    assert not at.exception
    assert [p.proto.text for p in at.get("progress") if p.proto.value == 100] == [
        f"{OTHER} · done · 8/8", f"{MODEL} · done · 8/8"]
    at.selectbox(key="ev_version").set_value(MODEL).run()
    # the summary: Cardiomegaly's AUC as scikit-learn computes it, Hernia not defined with the reason
    summary = next(df.value for df in at.dataframe if "AUC" in df.value.columns).set_index("finding")
    sc = eval_metrics.scored(ctx, at_registry(), info.id, MODEL)
    _, y, s = sc.labelled("Cardiomegaly")
    assert summary.loc["Cardiomegaly", "AUC"].startswith(f"{roc_auc_score(y, s):.3f} [")
    assert summary.loc["Hernia", "AUC"] == "not defined: no positive cases among 8"
    at.selectbox(key="ev_finding").set_value("Cardiomegaly").run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 5  # ROC, PR, reliability, the two versions' ROC, the paired differences
    # side by side: the paired AUC difference per finding, "not defined" where there is no positive
    compared = next(df.value for df in at.dataframe if "difference [95%]" in df.value.columns).set_index("finding")
    assert compared.loc["Cardiomegaly", "difference [95%]"].startswith(("+", "-"))
    assert compared.loc["Hernia", "difference [95%]"] == "not defined: no positive cases among 8"
    at.selectbox(key="ev_finding").set_value("Hernia").run()
    assert any("not defined (no positive cases among 8)" in i.value for i in at.info)
    at.radio(key="ev_group").set_value("view").run()
    assert not at.exception
    # every CSV names the model version(s), their weights, the set and its version, in its lines and its name
    specs = [at_registry().resolve(r) for r in (MODEL, OTHER)]
    assert any(f"{specs[0].model_id}-{specs[0].version}" in n for n in downloads)
    for n, data in downloads.items():
        assert n.endswith("_nih-8-v1.csv"), n
        named = [sp for sp in specs if f"{sp.model_id}-{sp.version}" in n]
        text = data.decode()
        assert named and text.startswith("# Research use only"), n
        assert all(f"{sp.model_id} version {sp.version} weights sha256 {sp.weights_sha256}" in text for sp in named)
        assert f"# evaluation set nih-8 v1 content sha256 {info.content_sha256}" in text, n


def at_registry():
    from inference.registry import Registry
    from services import settings

    return Registry(settings.load().models_dir)


def test_a_threshold_set_at_a_target_sensitivity_is_saved_and_put_in_force_by_an_admin(world):
    ctx, folder, labels = world
    made = eval_sets.from_folder(ctx, "nih-8", folder, labels, 1)
    from screens import _deps

    [run_id] = eval_runs.start(ctx, _deps.runner(), made.info.id, [MODEL], 1)
    _wait_for_runs(ctx, made.info.id)
    at = page("res", "thresholds")
    assert not at.exception and at.title[0].value == "Threshold sets"
    at.selectbox(key="ts_version").set_value(MODEL).run()
    at.selectbox(key="ts_rule").set_value("target_sensitivity").run()
    at.number_input(key="ts_target").set_value(0.9).run()
    table = next(df.value for df in at.dataframe if "TP" in df.value.columns).set_index("finding")
    cardio = table.loc["Cardiomegaly"]
    assert float(cardio["sensitivity"]) >= 0.9 and cardio["note"] == ""
    assert "no positive cases" in table.loc["Hernia", "note"]
    at.text_input(key="ts_name").input("screening")
    at.button(key="FormSubmitter:ts_save-Save threshold set").click().run()
    assert not at.error
    assert not at.exception
    assert [s.value for s in at.success][0].startswith(f"Saved screening v1 of {MODEL}")
    spec = at_registry().resolve(MODEL)
    [saved] = threshold_sets.sets_of(ctx, spec)
    assert (saved.rule, saved.target, saved.eval_set_id) == ("target_sensitivity", 0.9, made.info.id)
    assert saved.thresholds["Cardiomegaly"] == pytest.approx(float(cardio["threshold"]), rel=1e-3)
    assert "Hernia" not in saved.thresholds
    assert not [b for b in at.button if b.key == "ts_activate"]  # a researcher cannot put it in force
    at = page("boss", "thresholds")
    at.selectbox(key="ts_version").set_value(MODEL).run()
    at.button(key="ts_activate").click().run()
    assert [s.value for s in at.success] == [f"screening v1 is in force for {MODEL}."]
    assert threshold_sets.in_force(ctx, spec).source == "screening v1"
    at.button(key="ts_rollback").click().run()
    assert threshold_sets.in_force(ctx, spec).source == threshold_sets.DEFAULTS


def test_a_folder_outside_the_dataset_roots_is_refused_before_anything_is_read(world, tmp_path_factory):
    ctx, folder, labels = world
    outside = tmp_path_factory.mktemp("elsewhere")
    secret = outside / "labels.csv"
    secret.write_text("Image Index,Finding Labels\n")
    at = page("res", "evaluation")
    at.text_input(key="ev_name").input("sneaky")
    for f, csv_path in ((outside, labels), (folder, secret), (folder / ".." / ".." / "..", labels),
                        (outside / "no-such-folder", labels)):  # fmt: skip
        at.text_input(key="ev_folder").input(str(f))
        at.text_input(key="ev_csv").input(str(csv_path))
        at.button(key="ev_create").click().run()
        assert not at.exception
        (err,) = at.error
        assert "must lie under a dataset folder" in err.value and "does not exist" not in err.value
    assert eval_sets.list_sets(ctx) == []


def test_finished_runs_of_a_version_no_longer_installed_are_named_not_a_crash(world):
    from db import engine as dbe
    from db.models import EvalRun

    ctx, folder, labels = world
    made = eval_sets.from_folder(ctx, "nih-8", folder, labels, 1)
    dbe.write(ctx.engine, lambda s: s.add(EvalRun(
        set_id=made.info.id, model_id="retired_model", model_version="0.1.0", weights_sha256="r" * 64,
        status="done", n_total=8, n_done=8, created_by_id=1)))  # fmt: skip
    at = page("res", "evaluation")
    assert not at.exception
    assert any("retired_model@0.1.0: no longer installed" in c.value for c in at.caption)
    assert not [s for s in at.selectbox if s.key == "ev_version"]  # nothing left to show metrics of
    at = page("res", "thresholds")
    assert not at.exception
