"""A labelling task's queue order by model disagreement ranks only differences between scores of one kind."""

import json
from types import SimpleNamespace

import pytest

from services import labelling


def test_model_disagreement_compares_only_scores_of_one_kind(monkeypatch):
    def pred(kind, p):
        return SimpleNamespace(result=json.dumps({"probabilities": {"Effusion": p}, "score_kind": kind}))

    images = [SimpleNamespace(id=1, pixel_sha256="a"), SimpleNamespace(id=2, pixel_sha256="b")]
    preds = {"a": [pred("softmax", 0.01), pred("calibrated", 0.6)],  # unlike kinds: nothing to compare
             "b": [pred("calibrated", 0.2), pred("calibrated", 0.5)]}  # two calibrated versions, 0.3 apart
    monkeypatch.setattr(labelling.repo, "predictions_of", lambda s, sha, task: preds[sha])
    keys = labelling._priorities(None, None, "t", "model_disagreement", images)
    assert keys[2] == pytest.approx(-0.3)
    assert keys[1] > 1e8  # after every image with a disagreement, in the task's random order
