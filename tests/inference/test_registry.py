"""Discovery, sha256 checks and availability reasons, with the real weights."""

import shutil

import numpy as np
import pytest
import torch

from inference.device import DeviceUnavailable, resolve_device
from inference.registry import Registry, _sha256_cached
from inference.runner import Runner
from inference.types import ModelUnavailable

EXPECTED = {  # model id -> (task, parameter count from the models README)
    "anatomy_unet_jsrt": ("segmentation", 323_414),
    "bone_suppression_ae": ("bone_suppression", 193_377),
    "cxr15_mobilenetv3": ("classification", 1_240_905),
}


def test_every_model_loads_strict_with_checksum_and_matches_its_keys_file(registry, runner):
    builtin = [s for s in registry.specs() if s.builtin]  # trained versions: tests/inference/test_versions.py
    assert {s.model_id: s.task for s in builtin} == {k: v[0] for k, v in EXPECTED.items()}
    assert registry.unavailable() == {}
    for spec in (s for s in registry.available() if s.builtin):
        module = runner.load(spec.model_id)  # strict=True load of the sha256-verified bytes
        assert runner.load(spec.model_id) is module  # cached per (id, version, sha256, device)
        assert sum(p.numel() for p in module.parameters()) == EXPECTED[spec.model_id][1]
        keys_file = registry.weights_path(spec.model_id).with_suffix(".keys.txt")
        listed = {line.split("\t")[0]: line.split("\t")[1] for line in keys_file.read_text().splitlines()}
        assert {k: str(tuple(v.shape)) for k, v in module.state_dict().items()} == listed
        assert spec.intended_use.startswith("Research use only.")


def test_classifier_spec_has_an_operating_point_per_label(registry):
    spec = registry.get("cxr15_mobilenetv3")
    assert len(spec.labels) == 15 and set(spec.thresholds) == set(spec.labels)
    assert all(0 < t < 1 for t in spec.thresholds.values())


@pytest.fixture()
def copied_models(models_dir, tmp_path):
    for spec in Registry(models_dir, trained_roots=[]).specs():
        shutil.copy(models_dir / spec.weights_file, tmp_path / spec.weights_file)
    return tmp_path


def test_changed_byte_and_missing_file_are_reported_and_the_others_stay_available(copied_models):
    bone = copied_models / "bone_suppression_kalisz_ae_torch.pt"
    data = bytearray(bone.read_bytes())
    data[len(data) // 2] ^= 0x01
    bone.write_bytes(bytes(data))
    (copied_models / "cxr15_mobilenetv3small_nih_float_from_int8.pt").unlink()

    registry = Registry(copied_models, trained_roots=[])  # built-ins only
    reasons = registry.unavailable()
    assert set(reasons) == {"bone_suppression_ae", "cxr15_mobilenetv3"}
    assert reasons["bone_suppression_ae"].startswith(
        "sha256 mismatch: expected 27a7beddfaf0f3b051eb9813f343f4eb261818a8e26f1fddd56844b6af0a53a3, got "
    )
    assert reasons["cxr15_mobilenetv3"] == (
        f"weights file cxr15_mobilenetv3small_nih_float_from_int8.pt not found in {copied_models}"
    )
    assert [s.model_id for s in registry.available()] == ["anatomy_unet_jsrt"]

    runner = Runner(registry, "cpu")
    with pytest.raises(ModelUnavailable) as err:
        runner.load("bone_suppression_ae")
    assert err.value.model_id == "bone_suppression_ae" and "sha256 mismatch" in err.value.reason
    with pytest.raises(ModelUnavailable, match="not found"):
        runner.classify(np.zeros((64, 64), np.float32))
    assert runner.load("anatomy_unet_jsrt") is not None


def test_sha256_is_computed_once_per_file_and_again_when_the_file_changes(copied_models):
    registry = Registry(copied_models, trained_roots=[])
    before = _sha256_cached.cache_info().misses
    for _ in range(3):
        assert len(registry.available()) == 3
    assert _sha256_cached.cache_info().misses - before == 3  # one hash per file, not per call

    heart = copied_models / "anatomy_unet_hybridgnet_jsrt_4class.pt"
    data = bytearray(heart.read_bytes())
    data[-1] ^= 0xFF
    heart.write_bytes(bytes(data))  # same size, new mtime
    assert "sha256 mismatch" in registry.unavailable()["anatomy_unet_jsrt"]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu_fails_clearly():
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        resolve_device("cuda")
