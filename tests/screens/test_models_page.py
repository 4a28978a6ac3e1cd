"""The admin's Models page through AppTest: who reaches it, what it lists, thresholds and the active version per
task (set, roll back, back to default) persisting in the database with their history."""

import pytest
import streamlit as st

from db import accounts, repo
from db import engine as dbe
from inference.registry import Registry
from services import auth, context, models_admin, settings, threshold_sets
from tests.conftest import TEST_MODEL, sign_in_through_the_form

BUILTIN = "cxr15_mobilenetv3@1.0.0"
TRAINED = f"{TEST_MODEL}@0.1.0"


@pytest.fixture
def env(app_env, versioned_models, monkeypatch):
    app_env = {**app_env, "CXR_REVIEW_MODELS_DIR": str(versioned_models)}
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    s = settings.load(app_env)
    dbe.upgrade(s.db_url)
    ctx = context.build(s)
    st.cache_resource.clear()  # the cached context and registry belong to the previous test
    st.cache_data.clear()
    auth.add_user(ctx.engine, "rad", "radiologist", "radiologist-pw")
    auth.add_user(ctx.engine, "boss", "admin", "admin-password")
    return ctx, Registry(s.models_dir)


def frame(at, column: str):
    """The first table on the page with that column (plain dataframes carry no key in AppTest)."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def models_page(username="boss", password="admin-password"):
    return sign_in_through_the_form(username, password).switch_page("screens/models.py").run()


def test_only_an_admin_reaches_the_models_page_which_lists_every_version(env):
    at = sign_in_through_the_form("rad", "radiologist-pw")
    at.switch_page("screens/models.py").run()
    assert at.title[0].value == "Worklist" and "may not open Models" in at.warning[0].value

    at = models_page()
    assert not at.exception
    assert at.title[0].value == "Models"
    assert "Research use only" in at.caption[0].value
    table = frame(at, "Weights sha256")
    by_ref = {f"{m}@{v}": row for (m, v), row in table.set_index(["Model", "Version"]).iterrows()}
    default = env[1].for_task("classification").ref  # chosen on evidence (assets/models/evidence)
    assert by_ref[default]["Runs now"] and sum(table["Runs now"] & (table["Task"] == "classification")) == 1
    assert by_ref[BUILTIN]["Status"] == "available" and by_ref[BUILTIN]["Runs now"] == (default == BUILTIN)
    assert by_ref[BUILTIN]["Weights sha256"].startswith("0cdb24a96b81")
    assert by_ref[TRAINED]["Status"] == "available" and not by_ref[TRAINED]["Runs now"]
    assert by_ref[TRAINED]["Labels"] == "Cardiomegaly, Effusion"
    assert by_ref[TRAINED]["Intended use"] == "Test fixture only"
    assert by_ref[f"{TEST_MODEL}@0.2.0"]["Status"].startswith(
        "unavailable: weights file weights.pt not found"
    )
    assert by_ref[f"{TEST_MODEL}@0.3.0"]["Status"].startswith("unavailable: sha256 mismatch")
    # one metrics table per version with metrics; the test version's is the one with its AUC
    tables = [df.value for df in at.dataframe if "Metric" in df.value.columns]
    values = [dict(zip(t["Metric"], t["Value"], strict=True)) for t in tables]
    assert any(v.get("auc · Cardiomegaly") == "0.81" for v in values)
    assert any("No validation metrics" in c.value for c in at.caption)  # the built-in versions have none
    # how each classifier's default thresholds were chosen, from its model.json
    rules = [m.value for m in at.markdown if m.value.startswith("**Default thresholds**")]
    assert any("sensitivity >= 0.9 per finding" in r for r in rules)  # assets/models cxr14 1.2.0
    assert any("Youden point" in r for r in rules) and any("records no rule" in r for r in rules)
    # only usable versions can be made active
    assert set(at.selectbox(key="active_sel_classification").options) >= {BUILTIN, TRAINED}
    assert f"{TEST_MODEL}@0.2.0" not in at.selectbox(key="active_sel_classification").options


def test_an_edited_threshold_persists_and_is_what_the_viewer_flags_with(env):
    ctx, registry = env
    at = models_page()
    at.selectbox(key="thr_model").select(BUILTIN).run()
    key = f"thr_{BUILTIN}_Cardiomegaly_0"
    assert at.number_input(key=key).value == pytest.approx(
        registry.resolve(BUILTIN).thresholds["Cardiomegaly"]
    )
    at.number_input(key=key).set_value(0.123)
    at.button(key=f"FormSubmitter:thr_form_{BUILTIN}-Save thresholds").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Saved 1 threshold of {BUILTIN}."]
    # the edit is a threshold set of the version, in force
    spec = registry.resolve(BUILTIN)
    in_force = threshold_sets.in_force(ctx, spec)
    assert (in_force.source, in_force.thresholds["Cardiomegaly"]) == (f"{BUILTIN} edits v1", pytest.approx(0.123))
    assert threshold_sets.get(ctx, in_force.set_id).thresholds == {"Cardiomegaly": pytest.approx(0.123)}
    # what the viewer's positive flags use: read with the stored results
    spec = registry.resolve(BUILTIN)
    with dbe.read(ctx.engine) as s:
        in_force = models_admin.thresholds_in_force(s, spec)
    assert in_force["Cardiomegaly"] == pytest.approx(0.123)
    assert in_force["Effusion"] == spec.thresholds["Effusion"]

    at = models_page()  # a new session shows the stored value
    at.selectbox(key="thr_model").select(BUILTIN).run()
    assert at.number_input(key=key).value == pytest.approx(0.123)
    assert any("Cardiomegaly 0.123" in c.value for c in at.caption)
    at.button(key=f"thr_reset_{BUILTIN}").click().run()
    assert threshold_sets.in_force(ctx, spec).source == threshold_sets.DEFAULTS
    assert [a.label for a in threshold_sets.history(ctx, spec)] == [threshold_sets.DEFAULTS, f"{BUILTIN} edits v1"]
    assert at.number_input(key=f"thr_{BUILTIN}_Cardiomegaly_1").value == spec.thresholds["Cardiomegaly"]


def test_a_threshold_outside_zero_to_one_is_refused(env):
    ctx, registry = env
    with pytest.raises(models_admin.ModelChoiceRefused, match="between 0 and 1"):
        models_admin.save_thresholds(ctx, registry.resolve(BUILTIN), {"Cardiomegaly": 1.5}, 1)
    assert threshold_sets.sets_of(ctx) == []


def test_the_active_version_is_set_rolled_back_and_reset_with_its_history(env):
    ctx, registry = env
    at = models_page()
    assert at.button(key="active_rollback_classification").disabled  # nothing to roll back yet
    at.selectbox(key="active_sel_classification").select(TRAINED).run()
    at.button(key="active_set_classification").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Finding classification now runs {TRAINED}."]
    with dbe.read(ctx.engine) as s:
        row = repo.active_model(s, "classification")
        assert (row.model_id, row.model_version) == (TEST_MODEL, "0.1.0")
        assert row.weights_sha256 == registry.resolve(TRAINED).weights_sha256
        assert row.set_at.tzinfo is not None and accounts.get_user_by_name(s, "boss").id == row.set_by_id
    assert models_admin.active_specs(ctx, registry)[0]["classification"].ref == TRAINED
    assert any(f"runs **{TRAINED}**" in m.value for m in at.markdown)

    at.selectbox(key="active_sel_classification").select(BUILTIN).run()
    at.button(key="active_set_classification").click().run()
    assert models_admin.active_specs(ctx, registry)[0]["classification"].ref == BUILTIN
    at.button(key="active_rollback_classification").click().run()
    assert [s.value for s in at.success] == [f"Finding classification rolled back to {TRAINED}."]
    assert models_admin.active_specs(ctx, registry)[0]["classification"].ref == TRAINED
    history = frame(at, "Chosen")
    assert list(history["Chosen"]) == [TRAINED, BUILTIN, TRAINED] and set(history["By"]) == {"boss"}

    at.button(key="active_default_classification").click().run()
    with dbe.read(ctx.engine) as s:
        assert repo.active_model(s, "classification") is None
        assert len(repo.active_model_history(s, "classification")) == 4
    assert (
        models_admin.active_specs(ctx, registry)[0]["classification"].ref == registry.for_task("classification").ref
    )  # the registry default
    at = models_page()  # persisted: a new session sees the same history
    assert frame(at, "Chosen")["Chosen"][0] == models_admin.DEFAULT
    assert any("No version chosen" in c.value for c in at.caption)


def test_a_candidate_learnt_from_corrections_shows_its_shadow_evaluation_and_why_it_was_refused(env):
    import json

    ctx, registry = env
    folder = registry.resolve(TRAINED).directory
    with open(f"{folder}/model.json") as f:
        meta = json.load(f)
    d = {"a": 0.61, "b": 0.70, "difference": -0.09, "ci95": [-0.15, -0.03], "share_of_resamples_a_ahead": 0.0}
    meta |= {
        "parent": {"model_id": "cxr15_mobilenetv3", "version": "1.0.0", "weights_sha256": "ab" * 32},
        "from_task": {"task": "corrections", "trained_on": [1, 2, 3], "held_out": [4], "annotations": []},
        "status": "candidate",
        "shadow_evaluation": {
            "decision": "refused", "at": "2026-12-05T20:00:00+00:00",
            "active": {"id": "cxr15_mobilenetv3", "version": "1.0.0", "weights_sha256": "ab" * 32},
            "reasons": ["standard validation set: mean AUC candidate minus active -0.090 (95% CI -0.150 to -0.030) "
                        "is worse than allowed"],
            "sets": {"held-out corrected images": {"n_images": 1, "skipped": "no finding has both a positive and a "
                                                                             "negative image"},
                     "standard validation set": {"n_images": 60, "differences": {"mean AUC": d}}},
        },
    }  # fmt: skip
    with open(f"{folder}/model.json", "w") as f:
        json.dump(meta, f)
    at = models_page()
    assert not at.exception
    table = frame(at, "Shadow evaluation")
    line = table.set_index(["Model", "Version"]).loc[tuple(TRAINED.split("@")), "Shadow evaluation"]
    assert line.startswith("candidate, not promoted against cxr15_mobilenetv3@1.0.0: standard validation set")
    assert any("Shadow evaluation: candidate, not promoted" in w.value for w in at.warning)
    diffs = next(df.value for df in at.dataframe if "95% CI" in df.value.columns)
    assert list(diffs["Set"]) == ["held-out corrected images", "standard validation set"]
    assert list(diffs["95% CI"]) == ["not scored: no finding has both a positive and a negative image",
                                     "-0.150 to -0.030"]  # fmt: skip
    assert any("Learnt from corrections" in m.value and "1 held out by patient" in m.value for m in at.markdown)
