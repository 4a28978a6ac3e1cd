"""The Ray engine (services.ray_engine) against the local engine on real images and the real models. One local
Ray (2 CPUs, one actor) is started and stopped once for the module; the refusals need no Ray at all."""

import json
import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from db import engine as dbe
from inference.registry import Registry
from inference.runner import Runner
from services import analysis, context, importer, infer, precompute, settings
from tests.conftest import models_env, run_cli

ray = pytest.importorskip("ray")
from services import ray_engine  # noqa: E402  (after the skip: it names Ray in its errors only)

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", REPO.parent / "shared" / "models")).resolve()
BONE_WEIGHTS = "bone_suppression_kalisz_ae_torch.pt"
VARYING = {"timings_ms", "elapsed_ms"}  # measured, not computed


def _settings(data: Path) -> settings.Settings:
    return settings.load(
        {"CXR_REVIEW_DATA_DIR": str(data), "CXR_REVIEW_MODELS_DIR": str(MODELS), "CXR_REVIEW_SETTINGS": ""}
    )


@pytest.fixture(scope="module")
def images(shared_data):
    """Four NIH PNGs."""
    if not (MODELS / BONE_WEIGHTS).is_file():
        pytest.skip(f"model weights not in {MODELS} (set CXR_REVIEW_MODELS_DIR)")
    return sorted((shared_data / "nih" / "images").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def stored(shared_data, tmp_path_factory):
    """The DX DICOM's study in a fresh database, and its images (for analyse)."""
    s = _settings(tmp_path_factory.mktemp("data"))
    dbe.upgrade(s.db_url)
    ctx = context.build(s)
    res = importer.import_file(ctx.engine, ctx.store, shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm",
                               max_bytes=50 * 2**20)  # fmt: skip
    assert res.status == "imported"
    return ctx, precompute.select_images(ctx, [str(res.study_id)], False)


@pytest.fixture(scope="module")
def runs(images, stored, tmp_path_factory):
    """The local engine in this process, then, on one local Ray, infer on the same images (as many torch
    threads per actor as here: bit-identical outputs) and analyse on the stored study."""
    import torch

    s = _settings(tmp_path_factory.mktemp("unused"))
    broken = tmp_path_factory.mktemp("broken") / "broken.dcm"
    broken.write_bytes(b"DICM" + b"\0" * 50)
    inputs = [*images[:2], broken, *images[2:]]  # a rejection in the middle keeps its place
    local_out, ray_out = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    runner = Runner(Registry(MODELS), "cpu")
    local = list(infer.infer_paths(runner, inputs, local_out, max_bytes=s.max_upload_bytes))
    ctx, todo = stored
    with ray_engine.session(None, num_cpus=2) as r:
        assert r.is_initialized() and r.cluster_resources()["CPU"] == 2
        on_ray = list(ray_engine.infer_paths(r, s, inputs, ray_out, device="cpu", actors=1,
                                             threads=torch.get_num_threads()))  # fmt: skip
        analysed = list(ray_engine.analyse_images(r, ctx.settings, todo, device="cpu", actors=1))
    return {"inputs": inputs, "local": local, "ray": on_ray, "local_out": local_out, "ray_out": ray_out,
            "analysed": analysed, "stopped": not ray.is_initialized()}  # fmt: skip


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine(runs):
    assert [(x.file, x.status) for x in runs["ray"]] == [(x.file, x.status) for x in runs["local"]]
    assert [x.status for x in runs["ray"]] == ["done", "done", "rejected", "done", "done"]
    assert runs["ray"][2] == runs["local"][2]  # the same code and reason
    for mine, theirs in zip(runs["local"], runs["ray"], strict=True):
        if mine.status == "rejected":
            continue
        a, b = json.loads(Path(mine.out).read_text()), json.loads(Path(theirs.out).read_text())
        pa, pb = ({f["label"]: f["probability"] for f in d["findings"]} for d in (a, b))
        assert pa.keys() == pb.keys()
        assert max(abs(pa[k] - pb[k]) for k in pa) <= 1e-5
        strip = {"findings", *VARYING}
        assert {k: v for k, v in a.items() if k not in strip} == {
            k: v for k, v in b.items() if k not in strip
        }
        assert [(f["label"], f["positive"]) for f in a["findings"]] == [
            (f["label"], f["positive"]) for f in b["findings"]
        ]
        for key in ("anatomy_mask", "bone_suppressed"):
            ma, mb = (cv2.imread(str(out / d[key]), cv2.IMREAD_UNCHANGED)
                      for out, d in ((runs["local_out"], a), (runs["ray_out"], b)))  # fmt: skip
            assert ma.shape == mb.shape and np.array_equal(ma, mb), key


@pytest.mark.slow
def test_ray_is_stopped_at_the_end(runs):
    assert runs["stopped"]


@pytest.mark.slow
def test_the_run_summary_has_one_row_per_input(runs):
    rows = pq.read_table(runs["ray_out"] / ray_engine.SUMMARY).to_pylist()
    assert [r["file"] for r in rows] == [str(p) for p in runs["inputs"]]
    assert (rows[2]["status"], rows[2]["code"], rows[2]["models"]) == ("rejected", runs["ray"][2].code, [])
    for row, line in zip(rows, runs["ray"], strict=True):
        if line.status == "rejected":
            continue
        doc = json.loads(Path(line.out).read_text())
        assert row["status"] == "done" and row["out"] == line.out
        assert [m["id"] for m in row["models"]] == [m["id"] for m in doc["models"]]
        assert all(len(m["weights_sha256"]) == 64 for m in row["models"])
        assert row["findings"] == [
            {k: f[k] for k in ("label", "probability", "positive")} for f in doc["findings"]
        ]
        assert row["quality_gate_passed"] is doc["quality_gate"]["passed"]
        assert row["models_ms"] > 0 and row["elapsed_ms"] >= row["models_ms"]


@pytest.mark.slow
def test_analyse_on_ray_stores_what_the_viewer_then_finds(runs, stored):
    ctx, todo = stored
    assert [(i, outcome) for i, outcome, _ in runs["analysed"]] == [(img["id"], "computed") for img in todo]
    runner = Runner(Registry(MODELS), "cpu")
    for img in todo:
        cached = analysis.analyse_cached(ctx, runner, img)
        assert cached is not None and cached.findings is not None and not cached.computed_now
    assert precompute.not_stored(ctx, runner, todo) == []


class _Cluster:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


@pytest.mark.parametrize(
    ("resources", "device", "actors", "plan"),
    [
        ({"CPU": 2}, "auto", None, (1, {"num_cpus": 1, "num_gpus": 0})),  # one CPU left for reading
        ({"CPU": 16}, "cpu", 4, (4, {"num_cpus": 1, "num_gpus": 0})),
        ({"CPU": 32, "GPU": 4}, "auto", None, (4, {"num_cpus": 1, "num_gpus": 1})),  # one actor per GPU
        ({"CPU": 32, "GPU": 4}, "cpu", None, (31, {"num_cpus": 1, "num_gpus": 0})),
        ({"CPU": 2}, "auto", 2, "room for 1"),
        ({"CPU": 1}, "cpu", None, "needs 2"),
        ({"CPU": 8}, "cuda", None, "no GPU"),
        ({"CPU": 8, "GPU": 2}, "cuda", 3, "room for 2"),
        # on GPUs too one CPU stays for reading: as many GPUs as CPUs gives one actor fewer than GPUs
        ({"CPU": 4, "GPU": 4}, "auto", None, (3, {"num_cpus": 1, "num_gpus": 1})),
        ({"CPU": 4, "GPU": 4}, "cuda", 4, r"room for 3 \(4 GPU\(s\) and 4 CPU\(s\), one of them for"),
        ({"CPU": 1, "GPU": 1}, "auto", None, "the GPU engine needs 2"),
    ],
)
def test_pool_plan(resources, device, actors, plan):
    if isinstance(plan, str):
        with pytest.raises(ray_engine.RayUnavailable, match=plan):
            ray_engine.pool_plan(_Cluster(**resources), device, actors)
    else:
        assert ray_engine.pool_plan(_Cluster(**resources), device, actors) == plan


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("ray://head:10001", "Ray client .* not supported"),
        ("head", "expected HOST:PORT"),
        ("head:x", "expected"),
    ],
)
def test_addresses_that_cannot_work_are_refused_before_ray_starts(address, why):
    with pytest.raises(ray_engine.RayUnavailable, match=why):
        with ray_engine.session(address):
            pass
    assert not ray.is_initialized()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return models_env(tmp_path_factory, BONE_WEIGHTS)


def test_an_address_that_does_not_answer_fails_without_falling_back(env, images, tmp_path):
    out = tmp_path / "out"
    r = run_cli(
        "infer",
        [images[0], "--out", out, "--engine", "ray", "--ray-address", f"127.0.0.1:{_free_port()}"],
        env,
    )
    assert r.returncode == 3, r.stderr
    assert "no Ray cluster answers at 127.0.0.1:" in r.stderr and "not used instead" in r.stderr
    assert r.stdout == "" and not list(out.glob("*.json"))  # nothing ran locally either


def test_ray_not_installed_is_an_error_not_the_local_engine(env, images, tmp_path):
    fake = tmp_path / "fake"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    out = tmp_path / "out"
    r = run_cli("infer", [images[0], "--out", out, "--engine", "ray"], env | {"PYTHONPATH": str(fake)})
    assert r.returncode == 3, r.stderr
    assert "needs Ray, which is not installed" in r.stderr and "ray[data]==" in r.stderr
    assert r.stdout == "" and not list(out.glob("*.json"))


def test_ray_options_without_engine_ray_are_refused(env, images, tmp_path):
    r = run_cli("infer", [images[0], "--out", tmp_path, "--ray-address", "127.0.0.1:6379"], env)
    assert r.returncode == 2 and "--ray-address need --engine ray" in r.stderr
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_analyse_command_stores_results_once_and_reports_counts(env, shared_data):
    assert run_cli("db", ["upgrade"], env).returncode == 0
    dcm = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    assert run_cli("import", [dcm], env).returncode == 0
    unknown = run_cli("analyse", ["9999"], env)
    assert unknown.returncode == 2 and "no stored study" in unknown.stderr
    first = run_cli("analyse", ["--all"], env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"images": 1, "computed": 1, "stored_already": 0, "refused_by_gate": 0,
                                        "failed": 0}  # fmt: skip
    again = run_cli("analyse", ["--all"], env)
    assert json.loads(again.stdout)["stored_already"] == 1 and json.loads(again.stdout)["computed"] == 0
    port = _free_port()
    no_ray = run_cli("analyse", ["--all", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"], env)
    assert no_ray.returncode == 3 and no_ray.stdout == ""  # said even with nothing left to compute
    ctx = context.build(settings.load(env))
    [image] = precompute.select_images(ctx, [], everything=True)
    cached = analysis.analyse_cached(ctx, Runner(Registry(MODELS), "cpu"), image)
    assert cached is not None and cached.findings is not None  # the viewer's revisit path: nothing to compute
