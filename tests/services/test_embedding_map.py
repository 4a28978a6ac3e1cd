"""The embedding map of the failure-case explorer: error types at a threshold, a group's metrics against
scikit-learn, AUC "not defined" with its reason, clusters, both map methods, and the caches on real NIH images,
a real SQLite file and the real classifier (a second visit computes no feature and no map)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from inference import embeddings
from inference.registry import Registry
from inference.runner import Runner
from services import auth, embedding_map, eval_metrics, eval_sets
from tests.evalsets import nih_set, run_and_wait

MODEL = "cxr15_mobilenetv3@1.0.0"
FINDING = "Effusion"
FILES = ["00000075_000.png", "00000100_000.png", "00000211_000.png", "00000404_000.png", "00000550_000.png",
         "00000797_000.png", "00000442_000.png", "00002542_000.png", "00004387_000.png", "00009144_000.png"]  # fmt: skip


def test_error_types_at_a_threshold():
    labels = [True, True, False, False, None, True, False]
    scores = np.array([0.9, 0.2, 0.7, 0.1, 0.9, np.nan, 0.5])
    has = np.array([True, True, True, True, True, False, True])
    assert embedding_map.error_types(labels, scores, has, 0.5) == [
        "TP", "FN", "FP", "TN", "unlabelled", "no result", "FP",  # a score at the threshold is called positive
    ]  # fmt: skip
    assert embedding_map.error_types(labels, scores, has, 0.95)[:4] == ["FN", "FN", "TN", "TN"]


def test_group_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = np.clip(0.35 * y + rng.normal(0.4, 0.2, 200), 0, 1)
    m = embedding_map.group_metrics(y, s, 0.5, n_items=230)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    assert (m["n"], m["labelled"], m["positives"]) == (230, 200, int(y.sum()))
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["auc_note"] is None


def test_auc_is_not_defined_when_a_class_is_missing():
    only_negatives = embedding_map.group_metrics(np.zeros(4, bool), np.array([0.1, 0.6, 0.3, 0.2]), 0.5)
    assert only_negatives["auc"] is None and only_negatives["auc_note"] == "no positive cases among 4"
    assert only_negatives["sensitivity"] is None and only_negatives["specificity"] == pytest.approx(0.75)
    only_positives = embedding_map.group_metrics(np.ones(3, bool), np.array([0.9, 0.6, 0.3]), 0.5)
    assert only_positives["auc_note"] == "no negative cases among 3"
    empty = embedding_map.group_metrics(np.zeros(0, bool), np.zeros(0), 0.5, n_items=2)
    assert (empty["n"], empty["auc"], empty["ppv"]) == (2, None, None)
    rows = embedding_map.metric_rows(empty, only_negatives)
    assert [r["group"] for r in rows] == ["selection", "whole set"]
    assert rows[0]["AUC"] == "not defined: no positive cases among 4"


def test_clusters_split_separate_groups_of_the_map():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [30, 0], [0, 30]])
    xy = np.concatenate([c + rng.normal(0, 1, (20, 2)) for c in centres])
    found = embedding_map.clusters(xy, 3)
    truth = np.repeat([0, 1, 2], 20)
    assert len({(a, b) for a, b in zip(found, truth, strict=True)}) == 3  # one cluster per group, exactly
    assert len(set(embedding_map.clusters(xy, 50))) == embedding_map.MAX_CLUSTERS  # k is capped


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_both_methods_give_n_by_2_finite_coordinates_that_keep_groups_apart(method):
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 1280))
    v = embeddings.l2_normalise(np.concatenate([c + rng.normal(0, 0.05, (30, 1280)) for c in centres]))
    xy = embeddings.embedding_map(v, seed=0, method=method)
    assert xy.shape == (90, 2) and np.isfinite(xy).all()
    groups = np.repeat([0, 1, 2], 30)
    found = embedding_map.clusters(xy, 3)
    assert len({(a, b) for a, b in zip(found, groups, strict=True)}) == 3
    small = embeddings.embedding_map(v[:7], method=method)
    assert small.shape == (7, 2) and np.isfinite(small).all()
    with pytest.raises(ValueError, match="unknown map method"):
        embeddings.embedding_map(v, method="pca")


@pytest.fixture
def env(ctx, shared_data, tmp_path):
    nih = shared_data / "nih"
    ctx = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dataset_roots=(nih.resolve(),)))
    runner = Runner(Registry(ctx.settings.models_dir), "cpu")
    auth.add_user(ctx.engine, "res", "researcher", "a-long-password-1")
    info = nih_set(ctx, nih, lambda _, r: r["Image Index"] in FILES, tmp_path / "labels.csv", "map")
    assert run_and_wait(ctx, runner, info.id, MODEL).status == "done"
    return ctx, runner, info


def test_a_second_visit_computes_no_feature_and_no_map(env, monkeypatch):
    ctx, runner, info = env
    calls = {"embed": 0, "map": 0}
    real_embed, real_map = embeddings.embed_batch, embeddings.embedding_map

    def embed(*a, **k):
        calls["embed"] += 1
        return real_embed(*a, **k)

    def mapped(*a, **k):
        calls["map"] += 1
        return real_map(*a, **k)

    monkeypatch.setattr(embeddings, "embed_batch", embed)
    monkeypatch.setattr(embeddings, "embedding_map", mapped)
    steps = []
    first = embedding_map.build_map(ctx, runner, info.id, MODEL, "tsne", progress=lambda t, f: steps.append(f))
    assert (first.computed, first.map_cached, len(first.item_ids)) == (len(FILES), False, len(FILES))
    assert first.layer == "penultimate" and first.xy.shape == (len(FILES), 2) and np.isfinite(first.xy).all()
    assert steps and steps == sorted(steps)  # progress only goes forward
    assert calls == {"embed": 1, "map": 1}
    # the features are the classifier's penultimate layer, in the embedding cache `cxr-review similar` reads
    cached = list((embedding_map.cache_roots(ctx)[0] / "cxr15_mobilenetv3").rglob("penultimate/**/*.npy"))
    assert len(cached) == len(FILES) and np.load(cached[0]).shape == (1280,)

    again = embedding_map.build_map(ctx, runner, info.id, MODEL, "tsne")
    assert (again.computed, again.map_cached) == (0, True)
    assert calls == {"embed": 1, "map": 1}  # nothing computed: neither features nor map
    np.testing.assert_array_equal(again.xy, first.xy)
    assert again.item_ids == first.item_ids

    other = embedding_map.build_map(ctx, runner, info.id, MODEL, "umap")  # another method: a new map only
    assert (other.computed, other.map_cached) == (0, False) and calls == {"embed": 1, "map": 2}
    reseeded = embedding_map.build_map(ctx, runner, info.id, MODEL, "tsne", seed=1)
    assert not reseeded.map_cached


def test_a_set_made_again_under_another_name_gets_the_map_with_its_own_items(env, shared_data, tmp_path):
    # same content, another set id: the cached map is reused but must name this set's items, not the first's
    ctx, runner, info = env
    first = embedding_map.build_map(ctx, runner, info.id, MODEL, "tsne")
    keep = lambda _, r: r["Image Index"] in FILES  # noqa: E731
    again = nih_set(ctx, shared_data / "nih", keep, tmp_path / "again.csv", "map 2")
    assert again.id != info.id and again.content_sha256 == info.content_sha256
    second = embedding_map.build_map(ctx, runner, again.id, MODEL, "tsne")
    assert (second.computed, second.map_cached) == (0, True)
    assert second.item_ids == [it.id for it in eval_sets.items(ctx, again.id)]
    np.testing.assert_array_equal(second.xy, first.xy)
    col = embedding_map.colour(ctx, runner.registry, second, FINDING, 0.5)
    assert [it.id for it in col.items] == second.item_ids and len(col.types) == len(FILES)


def test_the_distilled_classifier_is_mapped_from_its_pooled_features(env):
    ctx, runner, info = env
    data = embedding_map.build_map(ctx, runner, info.id, "cxr14_mobilenetv3_multilabel@1.2.0", "tsne")
    assert (data.computed, len(data.item_ids), data.missing) == (len(FILES), len(FILES), [])
    cached = list((embedding_map.cache_roots(ctx)[0] / "cxr14_mobilenetv3_multilabel").rglob("*.npy"))
    assert len(cached) == len(FILES) and np.load(cached[0]).shape == (576,)


def test_the_map_is_coloured_by_error_type_and_its_metrics_are_the_evaluation_pages(env):
    ctx, runner, info = env
    data = embedding_map.build_map(ctx, runner, info.id, MODEL, "tsne")
    sc = eval_metrics.scored(ctx, runner.registry, info.id, MODEL)
    threshold = float(np.median(sc.scores[:, sc.findings.index(FINDING)]))
    col = embedding_map.colour(ctx, runner.registry, data, FINDING, threshold)
    whole = col.metrics()
    page = eval_metrics.finding_report(sc, FINDING, threshold, n_boot=10)
    assert whole["auc"] == pytest.approx(page["auc"])
    op = page["operating_point"]
    assert [whole[k] for k in ("tp", "fp", "fn", "tn")] == [op[k] for k in ("tp", "fp", "fn", "tn")]
    assert col.types.count("TP") == op["tp"] and col.types.count("FN") == op["fn"]
    # a selection's metrics are those of its items alone
    chosen = [it.id for it, t in zip(col.items, col.types, strict=True) if t in ("TP", "FN")]
    sel = col.metrics(chosen)
    assert (sel["n"], sel["positives"], sel["specificity"]) == (len(chosen), len(chosen), None)
    assert sel["auc_note"] == f"no negative cases among {len(chosen)}"
    # a subgroup (item_ids) keeps only its items, in the map's order
    part = embedding_map.colour(ctx, runner.registry, data, FINDING, threshold, item_ids=data.item_ids[:4])
    assert [it.id for it in part.items] == data.item_ids[:4] and part.data.xy.shape == (4, 2)


def test_an_image_that_moved_is_listed_and_the_rest_is_mapped(env, tmp_path):
    ctx, runner, info = env
    narrow = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dataset_roots=(tmp_path,)))
    data = embedding_map.build_map(narrow, runner, info.id, MODEL, "tsne")
    assert data.item_ids == [] and len(data.missing) == len(FILES)
    assert data.missing[0]["reason"] == "the file does not lie under a dataset folder (any more)"


def test_the_figure_has_a_trace_per_error_type_with_item_ids_and_a_highlighted_cluster():
    from inference.types import ModelRef
    from services.eval_sets import Item

    items = [Item(10 + i, f"sha{i}", {FINDING: label, "Mass": i == 0}, f"f{i}.png", None, None, None, None, None)
             for i, label in enumerate([True, True, False, False, None])]  # fmt: skip
    xy = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [6, 5]], np.float32)
    data = embedding_map.MapData(1, ModelRef("m", "1.0", "ab" * 32), "penultimate", "umap", 0, [it.id for it in items], xy)
    scores, has = np.array([0.9, 0.1, 0.8, 0.2, 0.5]), np.ones(5, bool)
    col = embedding_map.Coloured(data, FINDING, 0.5, items, [it.labels[FINDING] for it in items], scores, has,
                                 embedding_map.error_types([it.labels[FINDING] for it in items], scores, has, 0.5))  # fmt: skip
    fig = embedding_map.figure(col, np.array([0, 0, 0, 1, 1]), highlight=[10, 12])
    traces = {t.name: t for t in fig.data}
    assert list(traces) == ["TP (1)", "FP (1)", "FN (1)", "TN (1)", "unlabelled (1)", "clusters"]
    assert traces["FP (1)"].customdata[0][0] == 12 and list(traces["FP (1)"].selectedpoints) == [0]
    assert list(traces["TN (1)"].selectedpoints) == []  # not in the highlighted group: dimmed
    assert "f0.png" in traces["TP (1)"].hovertext[0] and "Effusion, Mass" in traces["TP (1)"].hovertext[0]
    assert list(traces["clusters"].text) == ["<b>C1</b>", "<b>C2</b>"]
    assert "ab" * 6 in fig.layout.title.text and "Research use only" in fig.layout.title.text
