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
MOVED = "00030102_000.png"  # NIH: Consolidation; imported under another name
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


# --- what a task did not ask about, patients across the split, the standard set, promotion order -----------------
class _Trained(Exception):
    pass


def _fake_train(seen: dict, out: Path):
    """Stands in for the trainer: keeps what it was given (the training CSV, `only`) and writes a model.json."""

    def train(kind, cfg, argv):
        seen["rows"] = {r["Image Index"]: r for r in csv.DictReader(open(cfg.labels))}
        seen["only"] = set(cfg.only)
        vdir = out / cfg.version
        vdir.mkdir(parents=True)
        (vdir / "model.json").write_text(
            json.dumps({"data": {}, "model_id": cfg.model_id, "version": cfg.version})
        )
        return {"model_json": str(vdir / "model.json")}

    return train


def _small_shared(tmp_path: Path, extra: dict[str, str]) -> tuple[Path, Path]:
    """A shared folder of the corrected NIH images and a few others, whose labels CSV gives the files in
    `extra` ({file: file of the patient it belongs to}) the Patient ID of another file: the same patient's
    other films."""
    nih = SHARED / "data" / "nih"
    rows = {r["Image Index"]: r for r in csv.DictReader(open(nih / "labels.csv"))}
    folder = tmp_path / "shared_images"
    folder.mkdir()
    keep = [*CORRECTED, *extra, MOVED]
    with open(tmp_path / "shared.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["Image Index", "Finding Labels", "Patient ID"])
        w.writeheader()
        for name in keep:
            (folder / name).symlink_to(nih / "images" / name)
            pid = rows[extra[name]]["Patient ID"] if name in extra else rows[name]["Patient ID"]
            w.writerow(
                {"Image Index": name, "Finding Labels": rows[name]["Finding Labels"], "Patient ID": pid}
            )
    return folder, tmp_path / "shared.csv"


def test_unasked_findings_come_from_the_shared_labels_and_patients_follow_the_split(
    world, tmp_path, monkeypatch
):
    ctx, users, ids, models = world
    registry = Registry(models)
    val = sorted(registry.resolve(START).metadata["data"]["val_files"])
    outside_val = [n for n in sorted(p.name for p in (SHARED / "data" / "nih" / "images").glob("*.png"))
                   if n not in val and n not in CORRECTED and n != MOVED]  # fmt: skip
    # every corrected patient has another film in the training part, and 00000100's patient one in the standard set
    extra = dict(zip(outside_val, CORRECTED, strict=False)) | {val[0]: "00000100_000.png"}
    images, labels = _small_shared(tmp_path, extra)
    # the same picture as a shared file under another name (its pixels say which file it is)
    renamed = tmp_path / "renamed.png"
    renamed.write_bytes((images / MOVED).read_bytes())
    (moved,) = importer.import_paths(ctx.engine, ctx.store, [renamed], max_bytes=2**30)
    task = labelling.create(ctx, users["boss"], name="effusion only", image_ids=[*ids.values(), moved.image_id],
                            readers={"adj": True}, findings=["Effusion"])  # fmt: skip
    from services import annotations

    for image_id in [*ids.values(), moved.image_id]:
        annotations.save(ctx, users["adj"], image_id, task_id=task.id, status="final",
                         labels={"Effusion": "present" if image_id == ids["00000100_000.png"] else "absent"})  # fmt: skip
    seen: dict = {}
    monkeypatch.setattr(shadow, "_train", _fake_train(seen, models / "trained"))
    cfg = ClassificationConfig(images=images, labels=labels, out=models / "trained", models_dir=models)
    meta = shadow.train_from_task(ctx, registry, cfg, "classification", task.name, init=START)

    truth = {r["Image Index"]: r for r in csv.DictReader(open(labels))}
    row = seen["rows"][f"task{task.id}-image{ids['00000100_000.png']}.png"]
    # Effusion as corrected; Atelectasis and Infiltration, which the task never asked about, from the shared labels
    assert row["Finding Labels"] == "Atelectasis|Effusion|Infiltration"
    assert row["Patient ID"] == truth["00000100_000.png"]["Patient ID"]
    moved_row = seen["rows"][f"task{task.id}-image{moved.image_id}.png"]
    assert moved_row["Patient ID"] == truth[MOVED]["Patient ID"]
    assert moved_row["Finding Labels"] == "Consolidation"  # Effusion as corrected (absent), the rest shared
    ft = meta["from_task"]
    by_version = {a["annotation_version_id"]: a for a in ft["annotations"]}
    held_files = {by_version[v]["shared_file"] for v in ft["held_out"]}
    assert held_files
    held_patients = {truth[f]["Patient ID"] for f in held_files}
    trained_patients = {truth[by_version[v]["shared_file"]]["Patient ID"] for v in ft["trained_on"]}
    assert not held_patients & trained_patients
    # no film of a held-out patient trains; no film of a corrected patient is in the standard set
    assert not {f for f in seen["only"] if f in truth and truth[f]["Patient ID"] in held_patients}
    assert (
        val[0] not in meta["standard_validation"]["files"] and meta["standard_validation"]["counted"] is True
    )
    corrected_patients = held_patients | trained_patients
    assert not {
        f for f in meta["standard_validation"]["files"] if truth[f]["Patient ID"] in corrected_patients
    }

    # an image that is not a shared file has no label for what the task did not ask: refused, naming them
    import cv2

    pixels = cv2.imread(str(images / MOVED), cv2.IMREAD_UNCHANGED)
    pixels[0, 0] ^= 1
    cv2.imwrite(str(tmp_path / "outside.png"), pixels)
    (outside,) = importer.import_paths(ctx.engine, ctx.store, [tmp_path / "outside.png"], max_bytes=2**30)
    other = labelling.create(ctx, users["boss"], name="outside", image_ids=[outside.image_id],
                             readers={"adj": True}, findings=["Effusion"])  # fmt: skip
    annotations.save(ctx, users["adj"], outside.image_id, task_id=other.id, status="final",
                     labels={"Effusion": "present"})  # fmt: skip
    with pytest.raises(
        shadow.ShadowError, match="did not ask about Atelectasis, Cardiomegaly, .*not shared files"
    ):
        shadow.train_from_task(ctx, registry, cfg, "classification", other.name, init=START)


def test_a_parent_without_validation_files_gives_no_counted_standard_set(world, tmp_path, monkeypatch):
    ctx, users, ids, models = world
    registry = Registry(models)
    task, _ = _finals(ctx, users, ids)
    no_val = _variant(registry, START, "1.1.7", lambda p, gen: None)
    path = Path(registry.resolve(no_val).directory) / "model.json"
    meta = json.loads(path.read_text())
    meta["data"].pop("val_files")
    path.write_text(json.dumps(meta))
    registry = Registry(models)
    seen: dict = {}
    monkeypatch.setattr(shadow, "_train", _fake_train(seen, models / "trained"))
    out = shadow.train_from_task(ctx, registry, _config(models), "classification", task.name, init=no_val)
    std = out["standard_validation"]
    assert std["counted"] is False and std["files"] == [] and "records no validation files" in std["from"]


def test_segmentation_task_without_every_structure_is_refused(world):
    ctx, users, ids, models = world
    task = labelling.create(ctx, users["boss"], name="lungs only", image_ids=list(ids.values()),
                            readers={"adj": True}, structures=["lungs"])  # fmt: skip
    with pytest.raises(shadow.ShadowError, match="does not outline heart, clavicles"):
        shadow.train_from_task(ctx, Registry(models), _config(models), "segmentation", task.name,
                               init="anatomy_unet_smp@1.3.0")  # fmt: skip


def _candidate(registry: Registry, version: str, counted: bool = True) -> str:
    ref = _variant(registry, START, version, lambda p, gen: None)
    path = Path(registry.resolve(ref).directory) / "model.json"
    meta = json.loads(path.read_text()) | {
        "from_task": {"task": "t", "held_out": []},
        "standard_validation": {"from": "test", "files": [MOVED], "counted": counted},
    }
    path.write_text(json.dumps(meta))
    return ref


def _passes(*args):
    d = {"difference": 0.0, "ci95": [0.0, 0.0], "a": 0.8, "b": 0.8}
    return {"n_images": 1, "differences": {"mean AUC": d}}


def test_promotion_is_all_or_nothing_and_an_uncounted_standard_set_is_not_scored(world, monkeypatch):
    ctx, users, ids, models = world
    boss = users["boss"].user_id
    registry = Registry(models)
    models_admin.set_active(ctx, registry, "classification", START, boss)
    ref, uncounted = _candidate(registry, "1.1.8"), _candidate(registry, "1.1.9", counted=False)
    runner = Runner(Registry(models), "cpu")
    monkeypatch.setattr(shadow, "_compare", _passes)

    def active():
        return models_admin.active_specs(ctx, runner.registry, ("classification",))[0]["classification"].ref

    def n_audit(action):
        with dbe.read(ctx.engine) as s:
            return sum(e.target == ref for e in audit.events(s, actions=(action,)))

    real_add = audit.add

    def failing_add(s, action, **kw):
        if action == "model_shadow_evaluated":
            raise RuntimeError("audit down")
        return real_add(s, action, **kw)

    with monkeypatch.context() as m:  # the audit row fails: the activation is rolled back with it
        m.setattr(audit, "add", failing_add)
        with pytest.raises(RuntimeError, match="audit down"):
            shadow.shadow_evaluate(ctx, runner, ref, boss, n_boot=10)
    assert active() == START and n_audit("model_activated") == 0
    assert (
        json.loads((Path(runner.registry.resolve(ref).directory) / "model.json").read_text())["status"]
        != "promoted"
    )

    def failing_write(*a, **kw):
        raise OSError("disk full")

    with monkeypatch.context() as m:  # model.json cannot be written: nothing is activated
        m.setattr(common, "write_model_json", failing_write)
        with pytest.raises(OSError, match="disk full"):
            shadow.shadow_evaluate(ctx, runner, ref, boss, n_boot=10)
    assert active() == START and n_audit("model_activated") == 0

    record = shadow.shadow_evaluate(ctx, runner, ref, boss, n_boot=10)
    assert record["decision"] == "promoted" and active() == ref
    assert n_audit("model_activated") == 1 and n_audit("model_shadow_evaluated") == 1
    kept = json.loads((Path(runner.registry.resolve(ref).directory) / "model.json").read_text())
    assert kept["status"] == "promoted"

    # a standard set the parent never recorded is reported, not counted: nothing else scored, so no promotion
    record = shadow.shadow_evaluate(ctx, runner, uncounted, boss, n_boot=10)
    assert "not counted" in record["sets"]["standard validation set"]["skipped"]
    assert record["decision"] == "refused" and active() == ref


def test_a_distilled_start_goes_on_with_its_own_head(world, monkeypatch):
    ctx, users, ids, models = world
    registry = Registry(models)
    task, _ = _finals(ctx, users, ids)
    seen: dict = {}
    fake = _fake_train(seen, models / "trained")

    def train(kind, cfg, argv):
        seen["head"] = cfg.head
        return fake(kind, cfg, argv)

    monkeypatch.setattr(shadow, "_train", train)
    shadow.train_from_task(ctx, registry, _config(models), "classification", task.name,
                           init="cxr14_mobilenetv3_multilabel@1.3.0")  # fmt: skip
    assert seen["head"] == "pooled_linear"  # the default config's "logsoftmax" could not start from it
