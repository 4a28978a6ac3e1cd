"""Learning from corrections on a real SQLite file with real NIH images: `--from-task` trains from a task's final
annotations with a patient hold-out and full provenance; shadow evaluation promotes a better candidate and refuses a
deliberately worse one (weights shuffled), with the reason kept; rollback restores the version before; a model of
the wrong task or labels is refused before anything trains."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from db import audit
from db import engine as dbe
from inference.models import cxr14_mobilenetv3_multilabel as family
from inference.registry import Registry
from inference.runner import Runner, verified_state_dict
from inference.training import common
from inference.training.classification import ClassificationConfig
from services import auth, importer, labelling, models_admin, shadow
from services.auth import SignedIn
from tests.conftest import SHARED, run_cli

START = "cxr14_mobilenetv3_multilabel@1.1.0"
# NIH images outside 1.1.0's validation files, one patient each, with their NIH labels as the "corrections"
CORRECTED = ("00000075_000.png", "00000100_000.png", "00000211_000.png", "00000442_000.png", "00000574_000.png",
             "00000797_000.png", "00000801_000.png", "00000846_000.png")  # fmt: skip


@pytest.fixture
def world(ctx, shared_data, tmp_path):
    nih = shared_data / "nih"
    results = list(importer.import_paths(ctx.engine, ctx.store, [nih / "images" / n for n in CORRECTED],
                                         max_bytes=2**30))  # fmt: skip
    assert [r.status for r in results] == ["imported"] * len(CORRECTED)
    users = {}
    for name, role in (("boss", "admin"), ("adj", "radiologist")):
        auth.add_user(ctx.engine, name, role, f"{name}-password-long")
        with dbe.read(ctx.engine) as s:
            users[name] = SignedIn(s.scalar(text("SELECT id FROM users WHERE username = :n"), {"n": name}), name,
                                   role, False)  # fmt: skip
    with dbe.read(ctx.engine) as s:
        ids = dict(s.execute(text("SELECT original_filename, id FROM images")).all())
    models = tmp_path / "shadow_models"
    models.mkdir()
    for pt in (SHARED / "models").glob("*.pt"):
        (models / pt.name).symlink_to(pt)
    return ctx, users, ids, models


def _finals(ctx, users, ids, name="corrections"):
    from services import annotations

    task = labelling.create(
        ctx, users["boss"], name=name, image_ids=list(ids.values()), readers={"adj": True}
    )
    truth = {
        r["Image Index"]: r["Finding Labels"]
        for r in csv.DictReader(open(SHARED / "data" / "nih" / "labels.csv"))
    }
    saved = {}
    for file, image_id in ids.items():
        present = [f for f in truth[file].split("|") if f != "No Finding"]
        labels = {f: "present" for f in present} or {"No Finding": "present"}
        saved[image_id] = annotations.save(ctx, users["adj"], image_id, task_id=task.id, status="final",
                                           labels=labels).version_id  # fmt: skip
    return task, saved


def _config(models: Path, **kw) -> ClassificationConfig:
    nih = SHARED / "data" / "nih"
    return ClassificationConfig(images=nih / "images", labels=nih / "labels.csv", out=models / "trained",
                                models_dir=models, epochs=1, head_epochs=1, steps_per_epoch=1, batch_size=8,
                                progress=False, threads=2, **kw)  # fmt: skip


def _variant(registry: Registry, ref: str, version: str, change) -> str:
    """A copy of version `ref` (its model.json, provenance included) with its weights changed by `change`."""
    spec = registry.resolve(ref)
    model = family.make(len(spec.labels), spec.arch["head"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in verified_state_dict(registry, spec).items()})  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            change(p, gen)
    meta = {k: v for k, v in spec.metadata.items() if k not in ("shadow_evaluation",)} | {"version": version}
    common.write_version(registry.trained_roots[-1] / spec.model_id / version, model, meta)
    return f"{spec.model_id}@{version}"


def _noisy(p, gen):
    p.add_(torch.randn(p.shape, generator=gen) * p.std().nan_to_num(0.1) * 3)


def _shuffled(p, gen):
    p.copy_(p.flatten()[torch.randperm(p.numel(), generator=gen)].view_as(p))


def test_from_task_trains_with_provenance_and_shadow_evaluation_promotes_better_refuses_worse(world):
    ctx, users, ids, models = world
    task, saved = _finals(ctx, users, ids)
    registry = Registry(models)
    boss = users["boss"].user_id
    # The active version is a deliberately degraded copy of 1.1.0: a fine-tune of 1.1.0 has to beat it.
    degraded = _variant(registry, START, "0.9.0", _noisy)
    models_admin.set_active(ctx, registry, "classification", degraded, boss)

    meta = shadow.train_from_task(ctx, registry, _config(models), "classification", task.name, init=START,
                                  shared_limit=16)  # fmt: skip
    ft = meta["from_task"]
    assert ft["task"] == "corrections" and sorted(
        a["annotation_version_id"] for a in ft["annotations"]
    ) == sorted(saved.values())
    assert ft["held_out"] and set(ft["held_out"]).isdisjoint(ft["trained_on"])
    assert sorted(ft["held_out"] + ft["trained_on"]) == sorted(saved.values())
    assert meta["parent"]["version"] == "1.1.0" and meta["status"] == "candidate"
    assert meta["data"]["n_images"] == 16 + len(ft["trained_on"])  # the held-out corrections never trained
    standard = meta["standard_validation"]["files"]
    assert (
        len(standard) > 100
        and not set(standard) & set(CORRECTED)
        and not set(standard) & set(meta["data"]["val_files"])
    )
    candidate = f"{meta['model_id']}@{meta['version']}"

    runner = Runner(Registry(models), "cpu")
    better = shadow.shadow_evaluate(ctx, runner, candidate, boss, n_boot=200, standard_limit=60)
    assert better["decision"] == "promoted", better["reasons"]
    std = better["sets"]["standard validation set"]
    assert std["n_images"] == 60 and std["differences"]["mean AUC"]["ci95"][0] >= -shadow.MARGIN
    assert "held-out corrected images" in better["sets"]
    assert (
        models_admin.active_specs(ctx, runner.registry, ("classification",))[0]["classification"].ref
        == candidate
    )

    worse_ref = _variant(runner.registry, candidate, meta["version"] + "-shuffled", _shuffled)
    worse = shadow.shadow_evaluate(ctx, runner, worse_ref, boss, n_boot=200, standard_limit=60)
    assert worse["decision"] == "refused"
    assert any(r.startswith("standard validation set: mean AUC") for r in worse["reasons"]), worse["reasons"]
    assert worse["sets"]["standard validation set"]["differences"]["mean AUC"]["difference"] < -0.05
    kept = json.loads((Path(runner.registry.resolve(worse_ref).directory) / "model.json").read_text())
    assert kept["status"] == "candidate" and kept["shadow_evaluation"]["decision"] == "refused"
    assert (
        models_admin.active_specs(ctx, runner.registry, ("classification",))[0]["classification"].ref
        == candidate
    )

    # One click back: the version before the promotion runs again, and every step is audited.
    assert models_admin.rollback(ctx, runner.registry, "classification", boss) == degraded
    with dbe.read(ctx.engine) as s:
        actions = [e.action for e in audit.events(s, actions=("model_shadow_evaluated", "model_activated",
                                                              "model_rollback"))]  # fmt: skip
    assert sorted(actions) == sorted(["model_activated", "model_shadow_evaluated", "model_activated",
                                      "model_shadow_evaluated", "model_rollback"])  # fmt: skip


def test_wrong_task_or_labels_and_a_task_without_finals_are_refused_before_training(
    world, app_env, versioned_models
):
    ctx, users, ids, models = world
    task, _ = _finals(ctx, users, ids)
    registry = Registry(models)
    trained = models / "trained"
    with pytest.raises(
        shadow.ShadowError, match="anatomy_unet_smp@1.3.0 is a segmentation model: it cannot start"
    ):
        shadow.train_from_task(ctx, registry, _config(models), "classification", task.name,
                               init="anatomy_unet_smp@1.3.0")  # fmt: skip
    # a classifier with other labels
    other = Registry(versioned_models).resolve("cxr14_multilabel_test@0.1.0")
    with pytest.raises(shadow.ShadowError, match="scores Cardiomegaly, Effusion"):
        shadow.check_start(other, "classification", task)
    empty = labelling.create(
        ctx, users["boss"], name="empty", image_ids=list(ids.values()), readers={"adj": True}
    )
    with pytest.raises(shadow.ShadowError, match="no final annotation with finding labels"):
        shadow.train_from_task(ctx, registry, _config(models), "classification", empty.name, init=START)
    with pytest.raises(shadow.ShadowError, match="no final annotation with a lung/heart/clavicle label map"):
        shadow.train_from_task(
            ctx, registry, _config(models), "segmentation", task.name, init="anatomy_unet_smp@1.3.0"
        )
    assert not trained.exists() or not any(trained.rglob("model.json"))  # nothing was written
    # The command line says it in one line, exit status 2.
    nih = SHARED / "data" / "nih"
    env = app_env | {"CXR_REVIEW_MODELS_DIR": str(models)}
    out = run_cli("train", [ "classification", "--images", str(nih / "images"), "--labels",
                                 str(nih / "labels.csv"), "--from-task", "corrections", "--init",
                                 "anatomy_unet_smp@1.3.0", "--no-progress"], env)  # fmt: skip
    assert out.returncode == 2 and "anatomy_unet_smp@1.3.0 is a segmentation model" in out.stderr


@pytest.mark.slow  # about 4 CPU-minutes on the shared 2-core machine: 1.3.0 reads five views per image
def test_segmentation_learns_from_final_label_maps_and_is_shadow_evaluated_per_structure(
    ctx, shared_data, tmp_path
):
    import cv2

    from inference.training.segmentation import SegmentationConfig
    from services import annotations

    jsrt = shared_data / "jsrt"
    names = ("JPCLN001.png", "JPCLN002.png", "JPCLN003.png", "JPCLN005.png")
    results = list(importer.import_paths(ctx.engine, ctx.store, [jsrt / "images512" / n for n in names],
                                         max_bytes=2**30))  # fmt: skip
    auth.add_user(ctx.engine, "boss", "admin", "boss-password-long")
    auth.add_user(ctx.engine, "adj", "radiologist", "adj-password-long")
    with dbe.read(ctx.engine) as s:
        uid = dict(s.execute(text("SELECT username, id FROM users")).all())
    boss, adj = (
        SignedIn(uid["boss"], "boss", "admin", False),
        SignedIn(uid["adj"], "adj", "radiologist", False),
    )
    task = labelling.create(
        ctx, boss, name="outlines", image_ids=[r.image_id for r in results], readers={"adj": True}
    )
    for name, r in zip(names, results, strict=True):
        label_map = cv2.imread(str(jsrt / "masks512" / name), cv2.IMREAD_UNCHANGED)
        annotations.save(ctx, adj, r.image_id, task_id=task.id, status="final", label_map=label_map)
    models = tmp_path / "seg_models"
    models.mkdir()
    for pt in (SHARED / "models").glob("*.pt"):
        (models / pt.name).symlink_to(pt)
    registry = Registry(models)
    cfg = SegmentationConfig(images=jsrt / "images512", masks=jsrt / "masks512", out=models / "trained",
                             models_dir=models, epochs=1, steps_per_epoch=1, batch_size=4, size=64, progress=False,
                             threads=2)  # fmt: skip
    meta = shadow.train_from_task(ctx, registry, cfg, "segmentation", "outlines", init="anatomy_unet_smp@1.3.0",
                                  shared_limit=4)  # fmt: skip
    ft = meta["from_task"]
    assert len(ft["annotations"]) == 4 and len(ft["held_out"]) == 1 and len(ft["trained_on"]) == 3
    assert meta["data"]["n_images"] == 4 + 3 and meta["parent"]["version"] == "1.3.0"
    assert not set(names) & set(meta["standard_validation"]["files"])
    models_admin.set_active(ctx, registry, "segmentation", "anatomy_unet_smp@1.3.0", boss.user_id)
    runner = Runner(Registry(models), "cpu")
    record = shadow.shadow_evaluate(ctx, runner, f"{meta['model_id']}@{meta['version']}", boss.user_id, n_boot=100,
                                    standard_limit=4, promote=False)  # fmt: skip
    held, std = record["sets"]["held-out corrected images"], record["sets"]["standard validation set"]
    assert held["n_images"] == 1 and std["n_images"] == 4
    assert set(std["differences"]) == {"Dice lungs", "Dice heart", "Dice clavicles"}
    worse = [d["ci95"][0] < -shadow.MARGIN for s in (held, std) for d in s["differences"].values()]
    assert record["decision"] == ("refused" if any(worse) else "not worse")
    assert (
        models_admin.active_specs(ctx, runner.registry, ("segmentation",))[0]["segmentation"].version
        == "1.3.0"
    )
