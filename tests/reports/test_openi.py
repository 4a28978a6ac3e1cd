"""The labeller against the hand-assigned MeSH terms of the OpenI reports, on the held-out half (reports the
rules were not tuned on), through the command line."""

import json
import os
import subprocess
import sys

import pytest

from reports import evaluate


@pytest.fixture(scope="module")
def openi_csv(shared_data):
    path = shared_data / "openi_reports" / "reports.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def test_split_is_a_fixed_function_of_the_id():
    # the README's numbers hold for this split only: it must never move
    assert [evaluate.split_of(f"CXR{i}") for i in range(1, 9)] == [
        "heldout", "heldout", "tuning", "heldout", "tuning", "heldout", "heldout", "tuning",
    ]  # fmt: skip
    halves = [evaluate.split_of(f"CXR{i}") for i in range(4000)]
    assert 0.45 < halves.count("heldout") / len(halves) < 0.55


def test_mesh_map():
    assert evaluate.mesh_findings("Cardiomegaly/borderline|Pulmonary Artery/enlarged") == {"Cardiomegaly"}
    assert evaluate.mesh_findings("Cardiac Shadow/enlarged/mild|Thickening/pleura/apex") == {
        "Cardiomegaly",
        "Pleural_Thickening",
    }
    assert evaluate.mesh_findings("Cardiac Shadow/borderline|Thickening/bronchi|Calcified Granuloma") == set()
    assert evaluate.mesh_findings("normal") == {"No Finding"}
    assert not evaluate.is_indexed("No Indexing") and not evaluate.is_indexed("")


def test_heldout_macro_f1_beats_the_keyword_matcher(openi_csv):
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "reports", "evaluate", str(openi_csv), "--text",
         "findings,impression", "--id", "report_id", "--mesh", "mesh_major", "--split", "heldout"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 1  # 23 reports have neither findings nor impression: reported, not scored
    assert {json.loads(line)["code"] for line in done.stderr.splitlines()} == {"empty_text"}
    result = json.loads(done.stdout)
    assert result["reports"] > 1200
    assert "Mass" in result["macro_over"] and "Fibrosis" not in result["macro_over"]  # >= 10 positives
    labeller, keyword = result["labeller"]["macro_f1"], result["keyword"]["macro_f1"]
    assert labeller > keyword + 0.3
    # Measured 0.92 at commit time (README); the floor catches a rule change that costs several points.
    assert labeller > 0.90
    # negation is where the keyword matcher fails: "no pleural effusion" in nearly every normal report
    effusion = result["labeller"]["findings"]["Effusion"]
    assert effusion["precision"] > 0.85 > 0.1 > result["keyword"]["findings"]["Effusion"]["precision"]
