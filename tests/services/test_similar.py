"""`cxr-review similar` as a user runs it (a real process, real files, the real classifier), its embedding cache,
and the same-patient check on covid_followup."""

import csv
import json
import shutil
import stat
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.registry import Registry
from inference.runner import Runner
from services import similar
from tests.conftest import MODELS, models_env, run_cli

WEIGHTS = "cxr15_mobilenetv3small_nih_float_from_int8.pt"
SHA256 = "0cdb24a96b813c2b0f3b4b06e632f31e6e497f4c57a259eca6d1c680ec7da751"  # shared/models/README.md
PATIENT_2 = "2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpg"  # covid_followup, 4 frontal films


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return models_env(tmp_path_factory, WEIGHTS)


@pytest.fixture(scope="module")
def among(shared_data, tmp_path_factory):
    """A folder of real films: patient 2's first film (the query), a byte copy of it under another name, the same
    film re-encoded as JPEG at quality 80 (other pixels, same picture), patient 2's second film, 3 NIH and 2
    JSRT radiographs, and a broken file."""
    folder = tmp_path_factory.mktemp("among")
    covid = shared_data / "covid_followup" / "images"
    query = folder / f"auntminnie-a-{PATIENT_2}"
    shutil.copy(covid / query.name, query)
    shutil.copy(query, folder / "copy_of_query.jpg")
    img = cv2.imread(str(query), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "reencoded.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    shutil.copy(covid / f"auntminnie-b-{PATIENT_2}", folder)
    for png in sorted((shared_data / "nih" / "images").glob("*.png"))[:3]:
        shutil.copy(png, folder)
    for png in sorted((shared_data / "jsrt" / "images512").glob("*.png"))[:2]:
        shutil.copy(png, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return folder


@pytest.fixture(scope="module")
def result(env, among, tmp_path_factory):
    """The query named as a file, and a second query that does not exist: one search over the folder."""
    missing = tmp_path_factory.mktemp("q") / "no_such_file.png"
    query = among / f"auntminnie-a-{PATIENT_2}"
    r = run_cli("similar", [query, missing, "--among", among, "--k", "4", "--device", "cpu"], env)
    return {"r": r, "lines": [json.loads(line) for line in r.stdout.splitlines()], "missing": missing}


def test_query_excluded_by_path_and_pixels_nearest_first(result, among):
    r, lines = result["r"], result["lines"]
    assert r.returncode == 1, r.stderr  # a query and a file of --among were refused
    q = lines[0]
    assert q["file"] == str(among / f"auntminnie-a-{PATIENT_2}") and q["status"] == "done"
    names = [Path(n["file"]).name for n in q["neighbours"]]
    distances = [n["distance"] for n in q["neighbours"]]
    assert len(names) == 4 and distances == sorted(distances)
    # Neither the query's own file nor its byte copy (same pixels under another name) comes back ...
    assert f"auntminnie-a-{PATIENT_2}" not in names and "copy_of_query.jpg" not in names
    # ... the same film re-encoded is found first, at about 0, the same patient's next film second.
    assert names[:2] == ["reencoded.jpg", f"auntminnie-b-{PATIENT_2}"]
    assert distances[0] < 0.1 < distances[1]
    assert all(Path(n["file"]).parent == among for n in q["neighbours"])


def test_every_line_names_the_model(result):
    q = result["lines"][0]
    assert q["model"] == {"id": "cxr15_mobilenetv3", "version": "1.0.0", "weights_sha256": SHA256}
    assert q["layer"] == "bneck_grid4" and "research use" in q["research_use"].lower()


def test_bad_files_are_reported_with_their_reason_and_the_rest_is_searched(result, among):
    lines = result["lines"]
    assert [(line["file"], line["status"]) for line in lines[1:]] == [
        (str(result["missing"]), "rejected"),
        (str(among / "broken.png"), "rejected"),
    ]
    assert lines[1]["code"] == "not_found" and lines[1]["reason"] == "no such file"
    assert lines[2]["among"] is True and lines[2]["code"] and lines[2]["reason"]
    assert "neighbours" not in lines[1] and "neighbours" not in lines[2]


def test_exit_0_when_all_read_and_2_for_usage_errors(env, among, shared_data, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for png in sorted((shared_data / "jsrt" / "images512").glob("*.png"))[:3]:
        shutil.copy(png, good)
    r = run_cli("similar", [good, "--among", good, "--k", "10", "--device", "cpu"], env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [Path(line["file"]).name for line in lines] == sorted(p.name for p in good.iterdir())
    assert all(len(line["neighbours"]) == 2 for line in lines)  # k larger than the folder: the 2 others

    for args, says in [
        ([good, "--among", tmp_path / "nowhere"], "not a folder"),
        ([good, "--among", good, "--k", "0"], "--k"),
        ([good, "--among", good, "--model", "no_such_model"], "no_such_model"),
        ([good, "--among", good, "--model", "anatomy_unet_jsrt"], "classification"),
    ]:
        r = run_cli("similar", args, env)
        assert r.returncode == 2 and says in r.stderr and r.stdout == "", (args, r.stderr)


def test_the_distilled_classifier_gives_penultimate_neighbours(env, shared_data, tmp_path):
    # its pooled_linear head has no linear3/bn3: the layer is the 576 pooled values its fc decides from
    good = tmp_path / "good"
    good.mkdir()
    for png in sorted((shared_data / "jsrt" / "images512").glob("*.png"))[:3]:
        shutil.copy(png, good)
    args = [good, "--among", good, "--device", "cpu", "--model", "cxr14_mobilenetv3_multilabel@1.2.0",
            "--layer", "penultimate"]  # fmt: skip
    r = run_cli("similar", args, env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 3 and all(len(line["neighbours"]) == 2 for line in lines)
    assert {(line["model"]["version"], line["layer"]) for line in lines} == {("1.2.0", "penultimate")}


def test_a_network_without_the_layer_is_a_usage_error(env, shared_data, tmp_path, monkeypatch, capsys):
    from inference import embeddings
    from services import cli

    def refuse(model, layer, name="this network"):
        raise embeddings.UnsupportedModel(f"the {layer} layer cannot be read from {name} (a Other network)")

    for k, v in {**env, "CXR_REVIEW_DATA_DIR": str(tmp_path / "data")}.items():  # no cached embedding
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(embeddings, "check_layer", refuse)
    png = sorted((shared_data / "jsrt" / "images512").glob("*.png"))[0]
    code = cli.main(["similar", str(png), "--among", str(png.parent), "--device", "cpu",
                     "--layer", "penultimate"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "the penultimate layer cannot be read from cxr15_mobilenetv3@1.0.0 (a Other network)" in err, err


@pytest.fixture(scope="module")
def runner():
    if not (MODELS / WEIGHTS).is_file():
        pytest.skip(f"model weights not in {MODELS}")
    return Runner(Registry(MODELS), "cpu")


def test_cache_second_run_computes_nothing_and_damage_is_recomputed(runner, among, tmp_path):
    files = sorted(among.iterdir())
    first, ref = similar.embed_files(runner, files, tmp_path, max_bytes=2**30)
    assert (first.computed, first.cached) == (
        len(files) - 2,
        1,
    )  # broken.png refused; the copy hits the cache
    second, _ = similar.embed_files(runner, files, tmp_path, max_bytes=2**30)
    assert (second.computed, second.cached) == (0, len(files) - 1)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    entries = sorted(tmp_path.rglob("*.npy"))
    assert len(entries) == len(files) - 2  # one entry per distinct picture
    assert entries[0].parts[-6:-2] == (ref.model_id, ref.version, ref.weights_sha256, "bneck_grid4")
    assert all(stat.S_IMODE(e.stat().st_mode) == 0o600 for e in entries)
    entries[0].write_bytes(b"not an array")
    third, _ = similar.embed_files(runner, files, tmp_path, max_bytes=2**30)
    assert (third.computed, third.cached) == (1, len(files) - 2)
    np.testing.assert_allclose(third.vectors, first.vectors, atol=1e-5)  # batch of 1, not of 8
    # Another layer is another cache: nothing of the first is reused for it.
    other, _ = similar.embed_files(runner, files, tmp_path, max_bytes=2**30, layer="penultimate")
    assert other.computed == len(files) - 2 and other.vectors.shape[1] == 1280


def test_same_patients_other_film_among_the_first_five(runner, shared_data, tmp_path):
    """Every frontal film of the 77 covid_followup patients with two or more: measured 0.72 of the films find
    one of the same patient's other films among the first five (penultimate layer: 0.18). About 10 s of
    reading and embedding on an idle 2-core machine."""
    root = shared_data / "covid_followup"
    rows = [
        r
        for r in csv.DictReader((root / "metadata.csv").open())
        if r["modality"] == "X-ray" and r["view"] in ("PA", "AP", "AP Supine")
    ]
    emb, _ = similar.embed_files(
        runner, [root / "images" / r["file"] for r in rows], tmp_path, max_bytes=2**30
    )
    assert len(emb.files) == len(rows) == 356
    patients = [r["patientid"] for r in rows]
    counts = Counter(patients)
    queries = [i for i, p in enumerate(patients) if counts[p] >= 2]
    found = similar.nearest_others(
        emb.vectors, emb.pixel_sha256, emb.vectors[queries], [emb.pixel_sha256[i] for i in queries], 5
    )
    hits = [any(patients[j] == patients[q] for j, _ in near) for q, near in zip(queries, found, strict=True)]
    assert len(hits) == 213 and len({patients[q] for q in queries}) == 77
    assert np.mean(hits) >= 0.65


def test_among_the_stored_images(ctx, app_env, runner, among, shared_data):
    """`--among db`: every image of the app's store, named by image id; a stored image whose embedding is cached
    is not read again, one whose file is gone and not cached is reported."""
    from services import importer

    covid = shared_data / "covid_followup" / "images"
    stored = [covid / f"auntminnie-{x}-{PATIENT_2}" for x in "abc"] + [among / "JPCLN001.png"]
    results = list(importer.import_paths(ctx.engine, ctx.store, stored, max_bytes=2**30))
    assert [r.status for r in results] == ["imported"] * 4
    r = run_cli("similar", [among / f"auntminnie-a-{PATIENT_2}", "--among", "db", "--device", "cpu"], app_env)
    assert r.returncode == 0, r.stderr
    (line,) = [json.loads(x) for x in r.stdout.splitlines()]
    near = line["neighbours"]
    # The stored copy of the query is left out; the same patient's two other films come first.
    assert [n["file"] for n in near[:2]] == [f"auntminnie-{x}-{PATIENT_2}" for x in "bc"]  # as imported
    assert len(near) == 3 and all(isinstance(n["image_id"], int) for n in near)

    cache = Path(app_env["CXR_REVIEW_DATA_DIR"]) / "embeddings"
    sources = similar.stored_sources(ctx.engine, ctx.store)
    sources[1].path.unlink()  # embedded by the run above: its cached embedding is used, the file not read
    first = list(similar.search(runner, [among / "JPCLN002.png"], sources, cache, max_bytes=2**30, k=5))
    assert len(first) == 1 and len(first[0]["neighbours"]) == 4
    assert sources[1].fields["image_id"] in {n["image_id"] for n in first[0]["neighbours"]}
    shutil.rmtree(cache)  # now nothing is cached: the missing file is reported with its image id
    again = list(similar.search(runner, [among / "JPCLN002.png"], sources, cache, max_bytes=2**30, k=5))
    assert len(again[0]["neighbours"]) == 3
    assert again[1] | {"reason": None} == sources[1].fields | {
        "status": "rejected", "code": "not_found", "reason": None, "among": True
    }  # fmt: skip
