"""The version that runs per task: an admin's choice while it can run, else the registry default with the
reason reported; choices that cannot run are refused."""

import pytest

from db import accounts
from db import engine as dbe
from inference.registry import Registry
from services import auth, models_admin
from tests.conftest import TEST_MODEL

TRAINED = f"{TEST_MODEL}@0.1.0"


@pytest.fixture
def setup(ctx, versioned_models):
    auth.add_user(ctx.engine, "boss", "admin", "long-enough-pw")
    with dbe.read(ctx.engine) as s:
        boss = accounts.get_user_by_name(s, "boss").id
    return (
        ctx,
        Registry(versioned_models, trained_roots=[versioned_models / "trained"]),
        boss,
        versioned_models,
    )


def test_the_chosen_version_runs_until_its_weights_go_then_the_default_runs_and_says_why(setup):
    ctx, registry, boss, models_dir = setup
    default, _ = models_admin.active_specs(ctx, registry)
    assert default["classification"].ref == "cxr15_mobilenetv3@1.0.0"
    models_admin.set_active(ctx, registry, "classification", TRAINED, boss)
    chosen, unavailable = models_admin.active_specs(ctx, registry)
    assert chosen["classification"].ref == TRAINED and unavailable == {}
    assert chosen["segmentation"] == default["segmentation"]  # other tasks keep their default

    (models_dir / "trained" / TEST_MODEL / "0.1.0" / "weights.pt").write_bytes(b"replaced")
    chosen, unavailable = models_admin.active_specs(ctx, registry)
    assert chosen["classification"].ref == "cxr15_mobilenetv3@1.0.0"
    assert "sha256 mismatch" in unavailable[TRAINED]
    assert [r.active for r in models_admin.catalogue(registry, chosen) if r.spec.ref == TRAINED] == [False]


def test_unusable_or_wrong_task_versions_are_refused_and_nothing_is_stored(setup):
    ctx, registry, boss, _ = setup
    for ref, task, why in [
        (f"{TEST_MODEL}@0.2.0", "classification", "weights file weights.pt not found"),
        (f"{TEST_MODEL}@0.3.0", "classification", "sha256 mismatch"),
        (TRAINED, "segmentation", "is a classification model"),
        (f"{TEST_MODEL}@9.9.9", "classification", "no usable version"),
    ]:
        with pytest.raises(models_admin.ModelChoiceRefused, match=why):
            models_admin.set_active(ctx, registry, task, ref, boss)
    assert models_admin.history(ctx, "classification") == [] and models_admin.pins(ctx) == {}


def test_a_rollback_to_a_version_that_can_no_longer_run_is_refused(setup):
    ctx, registry, boss, models_dir = setup
    models_admin.set_active(ctx, registry, "classification", TRAINED, boss)
    models_admin.set_active(ctx, registry, "classification", "cxr15_mobilenetv3@1.0.0", boss)
    (models_dir / "trained" / TEST_MODEL / "0.1.0" / "weights.pt").unlink()
    with pytest.raises(models_admin.ModelChoiceRefused, match="cannot roll back"):
        models_admin.rollback(ctx, registry, "classification", boss)
    assert models_admin.pins(ctx)["classification"].ref == "cxr15_mobilenetv3@1.0.0"
    assert len(models_admin.history(ctx, "classification")) == 2  # the refused rollback left no trace


def test_the_evidence_table_marks_the_rules_choice_the_budget_and_stale_weights(tmp_path):
    from inference.registry import Registry
    from services import models_admin
    from tests.conftest import MODELS
    from tests.inference.test_versions import _evidence, _measured, write_anatomy

    write_anatomy(tmp_path, "2.0.0", seed=1)
    write_anatomy(tmp_path, "2.1.0", seed=2)
    reg = Registry(MODELS, trained_roots=[tmp_path])
    builtin, a, b = (reg.resolve(r) for r in ("anatomy_unet_jsrt", "anatomy_unet_smp@2.0.0", "anatomy_unet_smp@2.1.0"))
    assert models_admin.evidence_table(reg, "segmentation") == (None, [])
    _evidence(tmp_path, {builtin.ref: _measured(builtin, 0.80, 1.0), a.ref: _measured(a, 0.85, 1.3),
                         b.ref: {**_measured(b, 0.95, 1.1), "weights_sha256": "0" * 64},
                         "gone@1.0.0": _measured(b, 0.99, 1.0), "anatomy_unet_smp@9.9.9": _measured(a, 0.97, 9.0)})  # fmt: skip
    _, rows = models_admin.evidence_table(reg, "segmentation")
    by = {r["Version"]: r for r in rows}
    assert by[a.ref]["Default by the rule"] == "yes" and by[builtin.ref]["Default by the rule"] == ""
    assert by[b.ref]["Default by the rule"] == "not counted: other weights now"
    assert by["gone@1.0.0"]["Default by the rule"] == "not installed"
    assert by["anatomy_unet_smp@9.9.9"]["× the reference's time"] == "9 (over the budget)"
    assert by[a.ref]["lungs_dice · lungs"] == "0.850 (n ?)"


def test_the_shipped_classification_evidence_refuses_a_tie_that_may_hide_a_loss_and_shows_paired_differences():
    from inference.registry import Registry
    from services import models_admin
    from tests.conftest import MODELS

    reg = Registry(MODELS)
    data, rows = models_admin.evidence_table(reg, "classification")
    by = {r["Version"]: r for r in rows}
    chosen = reg.for_task("classification").ref
    assert by[chosen]["Default by the rule"] == "yes" and data["chosen"] == chosen
    assert by[chosen]["minus the rule's choice, paired"] == "—"
    for ref in set(by) - {chosen}:  # every other version: its paired difference, interval around it
        d = data["paired_vs_chosen"][ref]
        assert d["ci95"][0] <= d["difference"] <= d["ci95"][1]
        assert by[ref]["minus the rule's choice, paired"].startswith(f"{d['difference']:+.3f} [")
    # versions that trained or chose anything on the measured images are out, with the reason
    assert all(why.startswith(("trained on", "chose its")) for why in data["left_out"].values())
    held = reg.resolve("cxr14_mobilenetv3_multilabel@1.3.0").metadata["data"]  # whose held-out images were used
    assert held["val_use"] == "held_out" and len(held["val_files"]) == data["sets"][data["rule"]["set"]]["n"]
    # 1.3.0 has the higher mean but its paired interval against the built-in reaches below -0.01: not chosen
    v13 = data["versions"]["cxr14_mobilenetv3_multilabel@1.3.0"]
    assert v13["vs_reference"]["ci95"][0] < -0.01 and chosen != "cxr14_mobilenetv3_multilabel@1.3.0"
    # the built-in, calibrated (1.4.0), ranks images as the built-in does: the same mean to 3 decimals, and the
    # rule's tie-break, the lower calibration error, picks it
    rule, versions = data["rule"], data["versions"]
    builtin, calibrated = versions["cxr15_mobilenetv3@1.0.0"], versions["cxr14_mobilenetv3_multilabel@1.4.0"]
    assert rule["tie_break"] == {"metric": "mean_ece_all", "decimals": 3}
    means = [round(v["metrics"][rule["set"]][rule["metric"]]["mean"], 3) for v in (builtin, calibrated)]
    eces = [v["metrics"][rule["set"]]["mean_ece_all"]["mean"] for v in (builtin, calibrated)]
    assert means[0] == means[1] and eces[1] < eces[0] and chosen == "cxr14_mobilenetv3_multilabel@1.4.0"
    assert by[chosen]["mean_ece_all · " + rule["set"]].startswith(f"{eces[1]:.3f}")


def test_the_evidence_table_shows_what_the_non_inferiority_check_reads():
    from inference.registry import Registry
    from services import models_admin
    from tests.conftest import MODELS

    data, rows = models_admin.evidence_table(Registry(MODELS), "segmentation")
    by = {r["Version"]: r for r in rows}
    ref = data["rule"]["time_reference"]
    assert by[ref]["minus the reference, paired"] == "—"
    for v, row in by.items():
        if v != ref:
            d = data["versions"][v]["vs_reference"]
            assert row["minus the reference, paired"] == f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
