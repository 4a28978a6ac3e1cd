"""The researcher workbench's services on real NIH images, a real SQLite file and the real classifier:
evaluation sets (folder + CSV, stored studies with verdicts or final annotations, per-row reports, versioning),
background runs (reuse of the viewer's results, progress, resume, missing files), metrics against
scikit-learn, threshold sets (save, activate, history, rollback; what the viewer reads)."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sqlalchemy import delete, update

from db import accounts, repo
from db import engine as dbe
from db.models import AnnotationStatus, AnnotationVersion, EvalRun, Image, utcnow
from inference.registry import Registry
from inference.runner import Runner
from services import analysis, auth, eval_metrics, eval_runs, eval_sets, importer, threshold_sets

MODEL = "cxr14_mobilenetv3_multilabel@1.4.0"  # the default classifier (assets/models/evidence): what the viewer runs
FILES = ["00000075_000.png", "00000100_000.png", "00000211_000.png", "00000550_000.png", "00000797_000.png",
         "00000442_000.png"]  # fmt: skip


@pytest.fixture
def env(ctx, shared_data, tmp_path):
    # runs read a folder set's files only under the dataset folders: the shared images and this test's files
    ctx = dataclasses.replace(ctx, settings=dataclasses.replace(
        ctx.settings, dataset_roots=((shared_data / "nih").resolve(), tmp_path.resolve())))  # fmt: skip
    registry = Registry(ctx.settings.models_dir)
    runner = Runner(registry, "cpu")
    uid = 1
    auth.add_user(ctx.engine, "res", "researcher", "a-long-password-1")
    auth.add_user(ctx.engine, "rad", "radiologist", "a-long-password-2")
    return ctx, runner, uid, shared_data / "nih"


def _nih_rows(nih: Path, names: list[str]) -> list[dict]:
    with open(nih / "labels.csv", newline="") as fh:
        rows = {r["Image Index"]: r for r in csv.DictReader(fh)}
    return [rows[n] for n in names if n in rows]


def _write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _folder_set(env, tmp_path, names=None, extra=()):
    ctx, _, uid, nih = env
    names = names or FILES
    rows = _nih_rows(nih, names)
    assert len(rows) == len(names), "the chosen NIH files must be in labels.csv"
    csv_path = _write_csv(tmp_path / "labels.csv", rows + list(extra))
    return eval_sets.from_folder(ctx, "nih-small", nih / "images", csv_path, uid)


def test_a_folder_set_reports_each_bad_row_and_keeps_the_others(env, tmp_path):
    bad = [
        {"Image Index": "00000075_000.png", "Finding Labels": "Cardiomegaly"},  # named twice
        {"Image Index": "no_such_file.png", "Finding Labels": "Mass"},
        {"Image Index": "00000284_000.png", "Finding Labels": "Cardiomegaly|Dragons"},
    ]
    made = _folder_set(env, tmp_path, extra=bad)
    assert made.new and made.info.version == 1 and made.info.n_items == len(FILES)
    reasons = {(p["file"], p["reason"]) for p in made.left_out}
    assert reasons == {
        ("00000075_000.png", "file named twice"),
        ("no_such_file.png", "image not found in the folder"),
        ("00000284_000.png", "unknown finding(s) Dragons"),
    }
    assert made.info.report == made.left_out  # kept with the set
    items = eval_sets.items(env[0], made.info.id)
    first = items[0]
    assert (first.file_name, first.labels["Cardiomegaly"], first.labels["Mass"]) == ("00000075_000.png", True, False)
    assert (first.patient_sex, first.patient_age_years, first.view_position) == ("F", 61, "PA")


def test_a_set_is_versioned_by_its_files_and_labels(env, tmp_path):
    a = _folder_set(env, tmp_path)
    again = _folder_set(env, tmp_path)  # the same content: the same version
    assert (again.new, again.info.id, again.info.version) == (False, a.info.id, 1)
    ctx, _, uid, nih = env
    rows = _nih_rows(nih, FILES)
    rows[0] = rows[0] | {"Finding Labels": "No Finding"}  # one label changed: the next version
    b = eval_sets.from_folder(ctx, "nih-small", nih / "images", _write_csv(tmp_path / "b.csv", rows), uid)
    assert (b.new, b.info.version) == (True, 2) and b.info.content_sha256 != a.info.content_sha256
    fewer = _folder_set(env, tmp_path, names=FILES[:4])  # another file list: another version
    assert fewer.info.version == 3


def test_a_csv_without_the_needed_columns_is_refused_whole(env, tmp_path):
    ctx, _, uid, nih = env
    path = _write_csv(tmp_path / "x.csv", [{"Image Index": "00000075_000.png", "Labels": "Mass"}])
    with pytest.raises(eval_sets.EvalSetRefused, match="lacks the column"):
        eval_sets.from_folder(ctx, "x", nih / "images", path, uid)
    assert eval_sets.list_sets(ctx) == []


def _import(ctx, nih, names):
    from services import sidecar

    res = importer.import_paths(ctx.engine, ctx.store, [nih / "images" / n for n in names], max_bytes=2**30,
                                metadata=sidecar.load(nih / "labels.csv"))  # fmt: skip
    return [r.image_id for r in res]


def test_database_sets_take_truth_from_radiologists_verdicts_or_final_annotations(env):
    ctx, runner, uid, nih = env
    ids = _import(ctx, nih, FILES[:3])
    with dbe.read(ctx.engine) as s:
        rad = next(u.id for u in accounts.list_users(s) if u.username == "rad")
        studies = {i: s.get(Image, i).study_id for i in ids}

    def verdict(s, image_id, finding, decision):
        repo.upsert_verdict(s, repo.VerdictIn(studies[image_id], image_id, rad, "finding", finding, decision,
                                              "cxr15_mobilenetv3", "1.0.0", "x" * 64))  # fmt: skip

    def tx(s):
        verdict(s, ids[0], "Cardiomegaly", "accept")
        verdict(s, ids[0], "Mass", "reject")
        verdict(s, ids[1], "Cardiomegaly", "uncertain")
        s.add(AnnotationVersion(image_id=ids[2], task_id=None, reader_id=rad, status=AnnotationStatus.final,
                                labels=json.dumps({"Effusion": "present", "Mass": "uncertain"})))  # fmt: skip

    dbe.write(ctx.engine, tx)
    made = eval_sets.from_database(ctx, "from verdicts", repo.WorklistFilter(), "verdicts", uid)
    items = eval_sets.items(ctx, made.info.id)
    assert [(it.image_id, it.labels) for it in items] == [(ids[0], {"Cardiomegaly": True, "Mass": False})]
    assert {p["image_id"] for p in made.left_out} == {ids[1], ids[2]}  # only "uncertain", or nothing
    assert made.info.findings == ["Cardiomegaly", "Mass"]
    made = eval_sets.from_database(ctx, "from finals", repo.WorklistFilter(), "annotations", uid)
    [item] = eval_sets.items(ctx, made.info.id)
    assert (item.image_id, item.labels) == (ids[2], {"Effusion": True, "Mass": None})
    # signed report text, read by the report labeller: negation kept, unmentioned findings absent
    from db import report_versions as rv

    dbe.write(ctx.engine, lambda s: rv.add(s, studies[ids[1]], rad, rad, "FINDINGS: Small right pleural effusion. "
                                           "No pneumothorax. IMPRESSION: Effusion.", parent_id=None, sign=True))
    made = eval_sets.from_database(ctx, "from reports", repo.WorklistFilter(), "reports", uid)
    [item] = eval_sets.items(ctx, made.info.id)
    assert item.image_id == ids[1]
    assert (item.labels["Effusion"], item.labels["Pneumothorax"], item.labels["Cardiomegaly"]) == (True, False, False)
    with pytest.raises(eval_sets.EvalSetRefused, match="no stored study matches"):
        eval_sets.from_database(ctx, "none", repo.WorklistFilter(text="nobody"), "verdicts", uid)


def _wait(ctx, run_ids, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [eval_runs.get(ctx, r) for r in run_ids]
        if all(r.status in ("done", "failed") for r in runs):
            return runs
        time.sleep(0.2)
    raise TimeoutError([eval_runs.get(ctx, r) for r in run_ids])


def test_a_background_run_reuses_what_the_viewer_computed_and_the_metrics_match_sklearn(env, tmp_path):
    ctx, runner, uid, nih = env
    made = _folder_set(env, tmp_path)
    # the viewer computed the first image already (imported and analysed): the run reuses it
    [image_id] = _import(ctx, nih, FILES[:1])
    with dbe.read(ctx.engine) as s:
        image = s.get(Image, image_id)
        ref = {"pixel_sha256": image.pixel_sha256, "file_sha256": image.file_sha256}
    viewer = analysis.analyse(ctx, runner, ref)
    [run_id] = eval_runs.start(ctx, runner, made.info.id, [MODEL], uid)
    with pytest.raises(eval_runs.RunRefused, match="already has a run going on this set"):  # a second click
        eval_runs.start(ctx, runner, made.info.id, [MODEL], uid)
    [run] = _wait(ctx, [run_id])
    assert (run.status, run.n_done, run.n_total, run.n_reused, run.missing) == ("done", 6, 6, 1, [])
    sc = eval_metrics.scored(ctx, runner.registry, made.info.id, MODEL)
    assert sc.has.all()
    j = sc.spec.labels.index("Cardiomegaly")
    assert sc.scores[0, sc.findings.index("Cardiomegaly")] == viewer.findings["probabilities"][sc.spec.labels[j]]
    # a second run computes nothing
    [again] = _wait(ctx, eval_runs.start(ctx, runner, made.info.id, [MODEL], uid))
    assert again.n_reused == 6
    # metrics against sklearn on the same labels and scores
    for finding in sc.findings:
        _, y, s = sc.labelled(finding)
        r = eval_metrics.finding_report(sc, finding, 0.5, n_boot=50)
        if y.any() and not y.all():
            assert r["auc"] == pytest.approx(roc_auc_score(y, s))
            assert r["ap"] == pytest.approx(average_precision_score(y, s))
        else:
            assert "auc" not in r and r["undefined"].startswith("no positive cases")
    rows = {r["finding"]: r for r in eval_metrics.summary_rows(sc, {}, n_boot=20)}
    assert rows["Hernia"]["AUC"] == "not defined: no positive cases among 6"


def test_an_interrupted_run_is_queued_again_and_a_vanished_file_is_reported(env, tmp_path):
    ctx, runner, uid, nih = env
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in FILES[:3]:
        shutil.copy(nih / "images" / n, folder)
    made = eval_sets.from_folder(ctx, "copy", folder, _write_csv(tmp_path / "l.csv", _nih_rows(nih, FILES[:3])), uid)
    (folder / FILES[1]).unlink()
    # a run its process left "running" a minute ago: queued again when a worker starts, then finished
    run_id = dbe.write(ctx.engine, lambda s: _add_run(s, made.info.id, runner, uid))
    assert eval_runs.requeue_abandoned(ctx, now=utcnow()) == 1
    assert eval_runs.ensure_worker(ctx, runner)
    [run] = _wait(ctx, [run_id])
    assert (run.status, run.resumed, run.n_done) == ("done", 1, 3)
    assert run.missing == [{"item": FILES[1], "reason": "no such file"}]


def _add_run(s, set_id, runner, uid):
    spec = runner.registry.resolve(MODEL)
    run = EvalRun(set_id=set_id, model_id=spec.model_id, model_version=spec.version, weights_sha256=spec.weights_sha256,
                  status="running", n_total=3, created_by_id=uid,
                  heartbeat_at=utcnow() - dt.timedelta(seconds=60))  # fmt: skip
    s.add(run)
    s.flush()
    return run.id


def test_a_fresh_running_run_of_another_process_is_left_alone(env, tmp_path):
    ctx, runner, uid, nih = env
    made = _folder_set(env, tmp_path, names=FILES[:2])
    run_id = dbe.write(ctx.engine, lambda s: _add_run(s, made.info.id, runner, uid))
    dbe.write(ctx.engine, lambda s: s.execute(update(EvalRun).values(heartbeat_at=utcnow())))
    assert eval_runs.requeue_abandoned(ctx) == 0
    assert eval_runs.get(ctx, run_id).status == "running"


def test_a_segmentation_model_is_refused_for_a_run(env, tmp_path):
    ctx, runner, uid, _ = env
    made = _folder_set(env, tmp_path, names=FILES[:2])
    with pytest.raises(eval_runs.RunRefused, match="only classification models"):
        eval_runs.start(ctx, runner, made.info.id, ["anatomy_unet_jsrt@1.0.0"], uid)


def test_threshold_sets_are_saved_activated_rolled_back_and_read_by_the_viewer(env):
    ctx, runner, uid, nih = env
    spec = runner.registry.resolve(MODEL)
    assert threshold_sets.in_force(ctx, spec).source == threshold_sets.DEFAULTS
    a = threshold_sets.save(ctx, "screening", spec, {"Cardiomegaly": 0.2}, "target_sensitivity", uid, target=0.9)
    b = threshold_sets.save(ctx, "screening", spec, {"Cardiomegaly": 0.3}, "youden", uid)
    assert (a.label, b.label, b.rule, a.target) == ("screening v1", "screening v2", "youden", 0.9)
    with pytest.raises(threshold_sets.ThresholdSetRefused, match="only an admin"):
        threshold_sets.activate(ctx, spec, a.id, uid, "researcher")
    threshold_sets.activate(ctx, spec, a.id, uid, "admin")
    threshold_sets.activate(ctx, spec, b.id, uid, "admin")
    force = threshold_sets.in_force(ctx, spec)
    assert (force.source, force.thresholds["Cardiomegaly"]) == ("screening v2", 0.3)
    assert force.thresholds["Mass"] == spec.thresholds["Mass"]  # not in the set: the default
    assert threshold_sets.rollback(ctx, spec, uid, "admin") == "screening v1"
    assert [h.label for h in threshold_sets.history(ctx, spec)] == ["screening v1", "screening v2", "screening v1"]
    # the viewer reads the set in force with the stored results
    [image_id] = _import(ctx, nih, FILES[:1])
    with dbe.read(ctx.engine) as s:
        image = s.get(Image, image_id)
        ref = {"pixel_sha256": image.pixel_sha256, "file_sha256": image.file_sha256}
    res = analysis.analyse(ctx, runner, ref)
    assert (res.thresholds_from, res.thresholds["Cardiomegaly"]) == ("screening v1", 0.2)
    with pytest.raises(threshold_sets.ThresholdSetRefused, match="between 0 and 1"):
        threshold_sets.save(ctx, "screening", spec, {"Cardiomegaly": float("nan")}, "manual", uid)
    with pytest.raises(threshold_sets.ThresholdSetRefused, match="belongs to"):
        threshold_sets.save(ctx, "screening", runner.registry.resolve("cxr14_mobilenetv3_multilabel@1.0.0"),
                            {"Mass": 0.5}, "manual", uid)  # fmt: skip


def test_proposed_thresholds_meet_their_target_on_the_set(env, tmp_path):
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.4, 0.35, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05])
    got = threshold_sets.propose({"Mass": (y, s), "Hernia": (np.zeros(3, bool), np.ones(3))}, "target_sensitivity", 0.9)
    assert got["Mass"]["threshold"] == 0.35 and got["Mass"]["sensitivity"] == 1.0
    assert got["Hernia"]["undefined"] == "cannot choose a threshold: no positive cases among 3"
    assert threshold_sets.rules_of(got, "target_sensitivity", 0.9) == ("target_sensitivity", None)
    # a rule of its own for one finding: youden picks 0.35 here too, max F1 as well; target specificity 1.0: 0.8
    own = threshold_sets.propose({"Mass": (y, s), "Nodule": (y, s)}, "youden", None,
                                 {"Nodule": ("target_specificity", 1.0)})  # fmt: skip
    assert (own["Mass"]["threshold"], own["Nodule"]["threshold"]) == (0.35, 0.8)
    assert own["Nodule"]["specificity"] == 1.0 and own["Nodule"]["sensitivity"] == 0.5
    rule, rules = threshold_sets.rules_of(own, "youden", None)
    assert rule == "per_finding"
    assert rules == {"Mass": {"rule": "youden", "target": None},
                     "Nodule": {"rule": "target_specificity", "target": 1.0}}  # fmt: skip


def test_a_set_with_a_rule_per_finding_keeps_each_rule(env):
    ctx, runner, uid, _ = env
    spec = runner.registry.resolve(MODEL)
    rules = {"Mass": {"rule": "youden", "target": None}, "Nodule": {"rule": "target_specificity", "target": 0.95}}
    saved = threshold_sets.save(ctx, "mixed", spec, {"Mass": 0.3, "Nodule": 0.6}, "per_finding", uid, rules=rules)
    assert (saved.rule, saved.rules) == ("per_finding", rules)


def test_infer_writes_the_threshold_set_in_force_and_flags_by_it(env, tmp_path):
    from services import infer

    ctx, runner, uid, nih = env
    spec = runner.registry.resolve(MODEL)
    saved = threshold_sets.save(ctx, "everything", spec, dict.fromkeys(spec.thresholds, 0.0), "manual", uid)
    threshold_sets.activate(ctx, spec, saved.id, uid, "admin")
    [line] = infer.infer_paths(runner, [nih / "images" / FILES[0]], tmp_path / "out", max_bytes=2**30, picked=[spec],
                               in_force=lambda sp: threshold_sets.in_force(ctx, sp))  # fmt: skip
    doc = json.loads(Path(line.out).read_text())
    assert doc["thresholds_from"] == "everything v1"
    # Every finding at its operating point of 0 is positive; "No Finding" then is not (it would contradict them).
    assert all(f["threshold"] == 0.0 for f in doc["findings"])
    assert {f["label"]: f["positive"] for f in doc["findings"]} == {
        label: label != "No Finding" for label in spec.thresholds
    }
    [line] = infer.infer_paths(runner, [nih / "images" / FILES[0]], tmp_path / "out2", max_bytes=2**30, picked=[spec])
    doc = json.loads(Path(line.out).read_text())
    assert doc["thresholds_from"] == infer.NO_DATABASE
    assert {f["label"]: f["threshold"] for f in doc["findings"]} == spec.thresholds


def test_a_radiologist_votes_once_per_finding_with_the_newest_verdict(env):
    ctx, runner, uid, nih = env
    auth.add_user(ctx.engine, "rad2", "radiologist", "a-long-password-3")
    [image_id] = _import(ctx, nih, FILES[:1])
    with dbe.read(ctx.engine) as s:
        readers = {u.username: u.id for u in accounts.list_users(s)}
        study_id = s.get(Image, image_id).study_id

    def verdict(reader, finding, decision, version):
        dbe.write(ctx.engine, lambda s: repo.upsert_verdict(s, repo.VerdictIn(
            study_id, image_id, readers[reader], "finding", finding, decision, "cxr15_mobilenetv3", version,
            "x" * 64)))  # fmt: skip

    # rad judged Mass under two versions, changing their mind: one vote, the newest (reject)
    verdict("rad", "Mass", "accept", "1.0.0")
    verdict("rad", "Mass", "reject", "1.1.0")
    # rad accepted Nodule under two versions, rad2 rejected it: one vote each, a tie, no answer
    verdict("rad", "Nodule", "accept", "1.0.0")
    verdict("rad", "Nodule", "accept", "1.1.0")
    verdict("rad2", "Nodule", "reject", "1.0.0")
    made = eval_sets.from_database(ctx, "votes", repo.WorklistFilter(), "verdicts", uid)
    [item] = eval_sets.items(ctx, made.info.id)
    assert item.labels == {"Mass": False, "Nodule": None}


def test_a_csv_download_names_its_model_version_weights_and_evaluation_set(env, tmp_path):
    ctx, runner, uid, _ = env
    made = _folder_set(env, tmp_path, names=FILES[:2])
    spec = runner.registry.resolve(MODEL)
    other = runner.registry.resolve("cxr14_mobilenetv3_multilabel@1.0.0")
    lines = eval_metrics.provenance([spec, other], made.info)
    text = eval_metrics.csv_bytes([{"finding": "Mass", "AUC": 0.7}], lines).decode()
    head = [ln for ln in text.splitlines() if ln.startswith("# ")]
    assert head[0].startswith("# Research use only")
    assert f"# model {spec.model_id} version {spec.version} weights sha256 {spec.weights_sha256}" in head
    assert f"# model {other.model_id} version {other.version} weights sha256 {other.weights_sha256}" in head
    assert f"# evaluation set nih-small v1 content sha256 {made.info.content_sha256}" in head
    assert text.splitlines()[len(head):] == ["finding,AUC", "Mass,0.7"]
    name = eval_metrics.file_name("roc_Pleural Thickening", [spec], made.info)
    assert name == f"roc_Pleural_Thickening_{spec.model_id}-{spec.version}_nih-small-v1.csv"


def _slow_first_item(monkeypatch):
    """run_task waits on its first call until released: an item slower than STALE_S."""
    entered, release, real = threading.Event(), threading.Event(), analysis.run_task

    def slow(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_task", slow)
    return entered, release


def test_a_slow_item_keeps_its_run_alive_and_it_is_not_claimed_twice(env, tmp_path, monkeypatch):
    ctx, runner, uid, _ = env
    monkeypatch.setattr(eval_runs, "STALE_S", 1.0)
    monkeypatch.setattr(eval_runs, "HEARTBEAT_S", 0.1, raising=False)
    made = _folder_set(env, tmp_path, names=FILES[:2])
    entered, release = _slow_first_item(monkeypatch)
    [run_id] = eval_runs.start(ctx, runner, made.info.id, [MODEL], uid)
    assert entered.wait(120)
    with dbe.read(ctx.engine) as s:
        began = eval_runs.db_now(s)
    while True:  # the item runs for longer than STALE_S by the database's clock
        with dbe.read(ctx.engine) as s:
            if (eval_runs.db_now(s) - began).total_seconds() > 2.5 * eval_runs.STALE_S:
                break
        time.sleep(0.05)
    assert eval_runs.requeue_abandoned(ctx) == 0  # another server process finds it alive
    release.set()
    [run] = _wait(ctx, [run_id])
    assert (run.status, run.resumed, run.n_done) == ("done", 0, 2)


def test_a_worker_whose_run_was_taken_over_stops_and_writes_nothing(env, tmp_path, monkeypatch):
    ctx, runner, uid, _ = env
    made = _folder_set(env, tmp_path, names=FILES[:3])
    run_id = dbe.write(ctx.engine, lambda s: _add_run(s, made.info.id, runner, uid))
    dbe.write(ctx.engine, lambda s: s.execute(update(EvalRun).values(status="queued")))
    run_id, token = eval_runs._claim(ctx)
    real = analysis.run_task

    def taken_over(*args, **kwargs):  # meanwhile another process requeued the run and claimed it
        dbe.write(ctx.engine, lambda s: s.execute(update(EvalRun).values(worker_token="other", n_done=0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_task", taken_over)
    with pytest.raises(eval_runs.RunLost):
        eval_runs.execute(ctx, runner, run_id, token)
    run = eval_runs.get(ctx, run_id)
    assert (run.status, run.n_done, run.finished_at) == ("running", 0, None)  # the other worker's to write


def test_a_busy_database_at_a_progress_write_does_not_fail_the_run(env, tmp_path, monkeypatch):
    ctx, runner, uid, _ = env
    monkeypatch.setattr(eval_runs, "BEAT_S", 0.0)  # progress after every item
    made = _folder_set(env, tmp_path, names=FILES[:2])
    busy, real_store, real_write = threading.Event(), analysis.store_result, dbe.write

    def store(*args, **kwargs):
        out = real_store(*args, **kwargs)
        busy.set()  # the run's next write finds the database busy
        return out

    def write(engine, fn, **kwargs):
        if threading.current_thread().name == "eval-runs" and busy.is_set():
            busy.clear()
            raise dbe.DatabaseBusy(5)
        return real_write(engine, fn, **kwargs)

    monkeypatch.setattr(analysis, "store_result", store)
    monkeypatch.setattr(dbe, "write", write)
    [run] = _wait(ctx, eval_runs.start(ctx, runner, made.info.id, [MODEL], uid))
    assert (run.status, run.n_done, run.error) == ("done", 2, None)


def test_a_run_queued_while_the_worker_decides_to_stop_is_still_done(env, tmp_path, monkeypatch):
    ctx, runner, uid, _ = env
    made = _folder_set(env, tmp_path, names=FILES[:1])
    real_claim, late = eval_runs._claim, []

    def claim(c):
        got = real_claim(c)
        if got is None and not late:  # a page queues a run just after the worker found none
            late.append(dbe.write(ctx.engine, lambda s: _add_run(s, made.info.id, runner, uid)))
            dbe.write(ctx.engine, lambda s: s.execute(update(EvalRun).where(EvalRun.id == late[0])
                                                      .values(status="queued")))  # fmt: skip
            asker = threading.Thread(target=eval_runs.ensure_worker, args=(ctx, runner))
            asker.start()
            asker.join(2)  # the page's ensure_worker, racing the worker's exit
        return got

    monkeypatch.setattr(eval_runs, "_claim", claim)
    _wait(ctx, eval_runs.start(ctx, runner, made.info.id, [MODEL], uid))
    deadline = time.monotonic() + 30
    while not late and time.monotonic() < deadline:  # the worker looks for more work after its run
        time.sleep(0.05)
    [run] = _wait(ctx, late, timeout=30)
    assert run.status == "done"


def test_a_deleted_image_and_a_folder_outside_the_dataset_roots_are_reported_not_read(env, tmp_path):
    ctx, runner, uid, nih = env
    ids = _import(ctx, nih, FILES[:2])
    with dbe.read(ctx.engine) as s:
        rad = next(u.id for u in accounts.list_users(s) if u.username == "rad")
        studies = {s.get(Image, i).study_id for i in ids}
    from db import report_versions as rv

    for study in studies:
        dbe.write(ctx.engine, lambda s, st=study: rv.add(s, st, rad, rad, "IMPRESSION: No mass.", parent_id=None,
                                                         sign=True))  # fmt: skip
    made = eval_sets.from_database(ctx, "stored", repo.WorklistFilter(), "reports", uid)
    assert made.info.n_items == 2
    dbe.write(ctx.engine, lambda s: s.execute(delete(Image).where(Image.id == ids[0])))
    [run] = _wait(ctx, eval_runs.start(ctx, runner, made.info.id, [MODEL], uid))
    assert run.missing == [{"item": "image no longer in the store", "reason": "image no longer in the store"}]
    # a folder set whose folder is no longer under a dataset folder: nothing is read from it
    folder = _folder_set(env, tmp_path, names=FILES[:1])
    narrow = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dataset_roots=(tmp_path,)))
    [run] = _wait(narrow, eval_runs.start(narrow, runner, folder.info.id, [MODEL], uid))
    assert run.missing == [{"item": FILES[0], "reason": "the file does not lie under a dataset folder (any more)"}]


def test_two_rollbacks_in_a_row_go_back_two_steps_not_back_and_forth(env):
    ctx, runner, uid, _ = env
    spec = runner.registry.resolve(MODEL)
    a = threshold_sets.save(ctx, "a", spec, {"Mass": 0.2}, "manual", uid)
    b = threshold_sets.save(ctx, "b", spec, {"Mass": 0.3}, "manual", uid)
    threshold_sets.activate(ctx, spec, a.id, uid, "admin")
    threshold_sets.activate(ctx, spec, b.id, uid, "admin")
    assert threshold_sets.rollback(ctx, spec, uid, "admin") == "a v1"
    assert threshold_sets.rollback(ctx, spec, uid, "admin") == threshold_sets.DEFAULTS  # before A, not B again
    assert threshold_sets.in_force(ctx, spec).thresholds["Mass"] == spec.thresholds["Mass"]
    with pytest.raises(threshold_sets.ThresholdSetRefused, match="nothing to roll back"):
        threshold_sets.rollback(ctx, spec, uid, "admin")
    assert [(h.label, h.rollback) for h in threshold_sets.history(ctx, spec)] == [
        (threshold_sets.DEFAULTS, True), ("a v1", True), ("b v1", False), ("a v1", False)]
    # a new activation after the rollbacks: one rollback returns to the defaults again
    threshold_sets.activate(ctx, spec, b.id, uid, "admin")
    assert threshold_sets.rollback(ctx, spec, uid, "admin") == threshold_sets.DEFAULTS


def test_a_finding_whose_target_needs_a_threshold_above_1_is_left_out_not_the_whole_set(env):
    ctx, runner, uid, _ = env
    spec = runner.registry.resolve(MODEL)
    y = np.array([1, 1, 0, 0], bool)
    got = threshold_sets.propose({"Mass": (y, np.array([0.9, 0.8, 1.0, 0.1])), "Nodule": (y, np.array([0.9, 0.8, 0.3, 0.1]))},
                                 "target_specificity", 1.0)  # fmt: skip
    assert got["Mass"]["undefined"].startswith("cannot reach the target")
    chosen = {f: p["threshold"] for f, p in got.items() if "undefined" not in p}
    saved = threshold_sets.save(ctx, "strict", spec, chosen, "target_specificity", uid, target=1.0)
    assert saved.thresholds == {"Nodule": 0.8}


def test_the_uncertainty_queue_reads_the_threshold_set_in_force(env):
    from services import labelling

    ctx, runner, uid, nih = env
    spec = runner.registry.resolve(MODEL)
    ids = _import(ctx, nih, FILES[:2])
    probs = {}
    for i in ids:
        with dbe.read(ctx.engine) as s:
            image = s.get(Image, i)
            ref = {"pixel_sha256": image.pixel_sha256, "file_sha256": image.file_sha256}
        probs[i] = analysis.analyse(ctx, runner, ref).findings["probabilities"]
    # the finding the two images' scores differ most on; the others' thresholds at 1, far from every score
    label = max(spec.thresholds, key=lambda k: abs(labelling._logit(probs[ids[0]][k]) - labelling._logit(probs[ids[1]][k])))
    for i in ids:  # the threshold at one image's score: that image is the most uncertain, first in the queue
        chosen = dict.fromkeys(spec.thresholds, 1.0) | {label: probs[i][label]}
        saved = threshold_sets.save(ctx, f"at {i}", spec, chosen, "manual", uid)
        threshold_sets.activate(ctx, spec, saved.id, uid, "admin")
        with dbe.read(ctx.engine) as s:
            images = [s.get(Image, j) for j in ids]
            keys = labelling._priorities(ctx, s, "t", "uncertainty", images)
        assert min(keys, key=keys.get) == i and keys[i] == pytest.approx(0.0, abs=1e-6)


def test_a_labels_file_that_is_not_a_regular_file_or_too_large_is_refused_before_it_is_read(env, tmp_path, monkeypatch):
    ctx, _, uid, nih = env
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(eval_sets.EvalSetRefused, match="is not a regular file"):
        eval_sets.from_folder(ctx, "x", nih / "images", fifo, uid)
    rows = _nih_rows(nih, FILES[:3])
    path = _write_csv(tmp_path / "big.csv", rows)
    monkeypatch.setattr(eval_sets, "MAX_CSV_BYTES", path.stat().st_size - 1)
    with pytest.raises(eval_sets.EvalSetRefused, match="is larger than"):
        eval_sets.from_folder(ctx, "x", nih / "images", path, uid)
    monkeypatch.setattr(eval_sets, "MAX_CSV_BYTES", 50 * 2**20)
    monkeypatch.setattr(eval_sets, "MAX_CSV_ROWS", 2)
    with pytest.raises(eval_sets.EvalSetRefused, match="has more than 2 rows: split the set"):
        eval_sets.from_folder(ctx, "x", nih / "images", path, uid)
    assert eval_sets.list_sets(ctx) == []


def test_the_pages_tables_come_from_the_services():
    proposal = {"Mass": {"threshold": 0.4, "tp": 3, "fp": 1, "fn": 0, "tn": 5, "sensitivity": 1.0, "specificity": 5 / 6,
                         "ppv": 0.75, "npv": 1.0, "f1": 0.86, "rule": "youden", "target": None},
                "Hernia": {"undefined": "cannot choose a threshold: no positive cases among 9", "rule": "youden",
                           "target": None}}  # fmt: skip
    rows = {r["finding"]: r for r in threshold_sets.proposal_rows(proposal)}
    assert (rows["Mass"]["rule"], rows["Mass"]["TP"], rows["Mass"]["note"]) == ("Youden's J", 3, "")
    assert rows["Hernia"]["note"] == "cannot choose a threshold: no positive cases among 9 (the default stays)"
    assert list(rows["Hernia"]) == list(threshold_sets.PROPOSAL_COLUMNS)
    assert threshold_sets.chosen_thresholds(proposal) == {"Mass": 0.4}
    edited = [{"finding": "Mass", "rule": "youden", "target": None},
              {"finding": "Nodule", "rule": "target_sensitivity", "target": 0.95}]  # fmt: skip
    assert threshold_sets.own_rules(edited, "youden", None) == {"Nodule": ("target_sensitivity", 0.95)}
    groups = [{"group": "PA", "images": 9, "positives": 3, "auc": 0.75, "ci95": [0.5, 0.9], "note": None, "gap": True},
              {"group": "AP", "images": 2, "positives": 1, "auc": None, "ci95": None, "note": "fewer than 5 images",
               "gap": False}]  # fmt: skip
    assert [r["AUC"] for r in eval_metrics.subgroup_rows(groups)] == ["0.750 [0.500–0.900]",
                                                                      "not defined: fewer than 5 images"]
    compared = [{"finding": "Mass", "n": 9, "n_pos": 3, "undefined": None, "a": 0.8, "b": 0.7, "difference": 0.1,
                 "ci95": [-0.05, 0.2]}]  # fmt: skip
    [row] = eval_metrics.comparison_rows(compared, "m@1", "m@2")
    assert (row["AUC m@1"], row["AUC m@2"], row["difference [95%]"]) == (0.8, 0.7, "+0.100 [-0.050, +0.200]")
    report = {"calibration": {"prob_pred": [0.1, 0.8], "prob_true": [0.0, 1.0], "counts": [4, 5]}}
    assert eval_metrics.reliability_rows(report)[1] == {"mean_predicted": 0.8, "observed_rate": 1.0, "images": 5}


def test_the_results_stamp_changes_with_a_finished_run_and_with_other_weights_under_the_same_version():
    from datetime import UTC, datetime

    def run(i, ref, status):
        m, v = ref.split("@")
        return eval_runs.RunInfo(i, 1, m, v, "a" * 64, status, 6, 6, 0, [], None, False, datetime.now(UTC), None)

    class Reg:
        def __init__(self, sha):
            self.sha = sha

        def resolve(self, ref):
            if ref.startswith("gone"):
                raise KeyError(ref)
            return type("Spec", (), {"weights_sha256": self.sha})()

    runs = [run(1, MODEL, "done"), run(2, MODEL, "running"), run(3, "other@1.0.0", "done")]
    assert eval_runs.results_stamp(runs, MODEL, Reg("a" * 64)) == (1, "a" * 64)
    assert eval_runs.results_stamp(runs, MODEL, Reg("b" * 64)) != eval_runs.results_stamp(runs, MODEL, Reg("a" * 64))
    assert eval_runs.results_stamp([*runs, run(4, MODEL, "done")], MODEL, Reg("a" * 64)) == (1, 4, "a" * 64)
    assert eval_runs.results_stamp(runs, "gone@1.0.0", Reg("a" * 64)) == (None,)
