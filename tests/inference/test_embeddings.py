"""inference.embeddings: unit-length features of the real classifier, exact search, the 2-D map."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inference import embeddings
from inference.registry import Registry
from inference.runner import Runner

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", REPO.parent / "shared" / "models"))


@pytest.fixture(scope="module")
def runner():
    if not (MODELS / "cxr15_mobilenetv3small_nih_float_from_int8.pt").is_file():
        pytest.skip(f"classifier weights not in {MODELS}")
    return Runner(Registry(MODELS), "cpu")


@pytest.fixture(scope="module")
def films(shared_data):
    """Two JSRT films and two NIH films, as the models see them (float32 in [0,1])."""
    paths = sorted((shared_data / "jsrt" / "images512").glob("*.png"))[:2]
    paths += sorted((shared_data / "nih" / "images").glob("*.png"))[:2]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255 for p in paths]


@pytest.mark.parametrize("layer,dim", [("bneck_grid4", 1536), ("penultimate", 1280)])
def test_unit_length_rows_with_their_model(runner, films, layer, dim):
    e = embeddings.embed_batch(runner, films, layer=layer)
    assert e.vectors.shape == (4, dim) and e.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e.vectors, axis=1), 1, atol=1e-5)
    assert (
        e.model.model_id == "cxr15_mobilenetv3"
        and e.model.version == "1.0.0"
        and len(e.model.weights_sha256) == 64
    )
    assert e.layer == layer and e.timings_ms["total"] > 0
    # A batch gives each image what it gets alone (running BatchNorm statistics, no batch effects).
    alone = embeddings.embed_batch(runner, films[1:2], layer=layer).vectors[0]
    np.testing.assert_allclose(e.vectors[1], alone, atol=1e-5)
    assert np.linalg.norm(e.vectors[0] - e.vectors[2]) > 0.1  # different films are apart


def test_a_slightly_changed_film_stays_nearer_than_other_films(runner, films):
    noisy = np.clip(films[0] + np.random.default_rng(0).normal(0, 0.01, films[0].shape), 0, 1).astype(
        np.float32
    )
    e = embeddings.embed_batch(runner, [films[0], noisy, *films[1:]]).vectors
    d = np.linalg.norm(e[1:] - e[0], axis=1)
    assert d[0] < 0.1 and d[0] < d[1:].min() / 3


def test_unknown_layer_and_non_classifier_are_refused(runner, films):
    with pytest.raises(ValueError, match="layer"):
        embeddings.embed_batch(runner, films[:1], layer="logits")
    with pytest.raises(ValueError, match="classification"):
        embeddings.embed_batch(runner, films[:1], model="anatomy_unet_jsrt")


def test_the_distilled_pooled_linear_head_gives_the_576_values_its_fc_decides_from(runner, films):
    e = embeddings.embed_batch(runner, films, model="cxr14_mobilenetv3_multilabel@1.2.0", layer="penultimate")
    assert e.vectors.shape == (4, 576) and e.model.version == "1.2.0"
    np.testing.assert_allclose(np.linalg.norm(e.vectors, axis=1), 1, atol=1e-5)
    # they are the input of its only linear layer: fc of them (before normalising) gives its logits
    net = runner.load("cxr14_mobilenetv3_multilabel@1.2.0")
    x = runner.classifier_input(films, runner.registry.lookup("cxr14_mobilenetv3_multilabel@1.2.0"))
    with torch.inference_mode():
        raw = embeddings.features(net, x, "penultimate")
        torch.testing.assert_close(net.fc(raw), net(x), atol=1e-4, rtol=1e-4)


def test_a_network_without_the_layer_is_refused_with_a_clear_value_error():
    class Other(torch.nn.Module):  # e.g. a DenseNet: neither the shipped head nor a pooled linear one
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(4, 2)

    for layer in embeddings.LAYERS:
        with pytest.raises(embeddings.UnsupportedModel, match=f"the {layer} layer cannot be read"):
            embeddings.features(Other(), torch.zeros(1, 1, 224, 224), layer)
    assert issubclass(embeddings.UnsupportedModel, ValueError)  # the map page shows ValueErrors as a sentence


def test_exact_search_matches_a_full_sort():
    rng = np.random.default_rng(1)
    gallery = embeddings.l2_normalise(rng.normal(size=(500, 32)))
    gallery[7] = gallery[3]  # a tie: the lower index comes first
    queries = np.concatenate([gallery[3:4], embeddings.l2_normalise(rng.normal(size=(300, 32)))])
    idx, dist = embeddings.ExactIndex(gallery, block=64).search(queries, 10)
    full = np.linalg.norm(queries[:, None, :] - gallery[None], axis=2)
    expected = np.argsort(full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist, np.take_along_axis(full, expected, 1), atol=1e-5)
    assert list(idx[0, :2]) == [3, 7] and dist[0, 0] == pytest.approx(0, abs=1e-3)
    small_idx, _ = embeddings.nearest(gallery[:4], queries[:2], 10)
    assert small_idx.shape == (2, 4)  # k larger than the gallery: all of it, sorted


def test_l2_normalise_keeps_zero_rows():
    v = embeddings.l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(v, [[0.6, 0.8], [0.0, 0.0]])


def test_embedding_map_puts_each_cluster_together():
    rng = np.random.default_rng(2)
    centres = embeddings.l2_normalise(rng.normal(size=(3, 64)))
    points = embeddings.l2_normalise(np.repeat(centres, 20, axis=0) + rng.normal(0, 0.05, (60, 64)))
    xy = embeddings.embedding_map(points)
    assert xy.shape == (60, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, embeddings.embedding_map(points))  # repeatable
    labels = np.repeat(np.arange(3), 20)
    nearest_other = embeddings.nearest(xy, xy, 2)[0][:, 1]
    assert (labels[nearest_other] == labels).mean() > 0.95
