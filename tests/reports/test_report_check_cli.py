"""`cxr-review reports check IMAGE --text REPORT.txt` as a user runs it: a real image, the classifier run as in
`infer` (or the stored results of an imported image), one JSON object out, exit codes 0 / 1 / 2."""

import json
import os
import subprocess
import sys

from services import analysis, importer
from services.context import Context

CLI = [sys.executable, "-m", "services.cli", "reports", "check"]
# the default classifier (1.4.0): Effusion 0.33 positive (threshold 0.049), Emphysema 0.011 negative (0.065)
IMAGE = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
REPORT = "FINDINGS: No pleural effusion. There is emphysema.\nIMPRESSION: Possible pneumothorax.\n"


def run(args, env):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ) | env)  # fmt: skip


def test_check_flags_a_negated_positive_and_an_asserted_negative_finding(tmp_path, shared_data, app_env):
    (tmp_path / "r.txt").write_text(REPORT)
    done = run([shared_data / "dicom" / IMAGE, "--text", tmp_path / "r.txt"], app_env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    kinds = {f["finding"]: (f["kind"], f["report_text"]) for f in out["flags"]}
    assert kinds == {"Effusion": ("negated_but_ai_positive", "No pleural effusion."),
                     "Emphysema": ("asserted_but_ai_negative", "There is emphysema.")}  # fmt: skip
    assert all(set(f) == {"finding", "kind", "report_text", "ai_probability"} for f in out["flags"])
    assert set(out["model"]) == {"id", "version", "weights_sha256"} and "Research use only" in out["research_use"]
    assert out["ai_results"] == "computed"
    assert not (tmp_path / "data").exists()  # no store was created on the way


def test_check_uses_the_stored_results_of_an_imported_image(tmp_path, shared_data, app_env, ctx: Context):
    from inference.registry import Registry
    from inference.runner import Runner

    (r,) = importer.import_paths(ctx.engine, ctx.store, [shared_data / "dicom" / IMAGE], max_bytes=2**30)
    from db import engine as dbe
    from db import repo

    with dbe.read(ctx.engine) as s:
        row = repo.study_images(s, r.study_id)[0]
        image = {"id": row.id, "pixel_sha256": row.pixel_sha256, "file_sha256": row.file_sha256}
    stored = analysis.analyse(ctx, Runner(Registry(ctx.settings.models_dir), "cpu"), image)
    (tmp_path / "r.txt").write_text(REPORT)
    done = run([shared_data / "dicom" / IMAGE, "--text", tmp_path / "r.txt"], app_env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ai_results"] == "cached"
    effusion = next(f for f in out["flags"] if f["finding"] == "Effusion")
    assert effusion["ai_probability"] == stored.findings["probabilities"]["Effusion"]


def test_check_exit_codes(tmp_path, shared_data, app_env):
    (tmp_path / "r.txt").write_text(REPORT)
    (tmp_path / "latin1.txt").write_bytes("Épanchement pleural.".encode("latin-1"))
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    image = shared_data / "dicom" / IMAGE
    missing = run([tmp_path / "nope.dcm", "--text", tmp_path / "r.txt"], app_env)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert run([image, "--text", tmp_path / "none.txt"], app_env).returncode == 2
    unreadable = run([image, "--text", tmp_path / "latin1.txt"], app_env)
    assert unreadable.returncode == 2 and "not UTF-8" in unreadable.stderr
    rejected = run([tmp_path / "fake.png", "--text", tmp_path / "r.txt"], app_env)
    assert rejected.returncode == 1 and json.loads(rejected.stderr)["status"] == "rejected"
    assert rejected.stdout == ""
