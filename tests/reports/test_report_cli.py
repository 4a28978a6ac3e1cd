"""`cxr-review reports label` and `reports evaluate` as a user runs them: a real process, a CSV in and out,
problems as JSON lines on stderr, exit codes."""

import csv
import json
import os
import subprocess
import sys

from reports.labeller import COLUMNS

CLI = [sys.executable, "-m", "services.cli", "reports"]


def run(args):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, env=dict(os.environ))


def write_reports(path, rows: list[bytes]) -> None:
    path.write_bytes(b"report_id,findings,impression,mesh\n" + b"".join(rows))


def read_labels(path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["report_id", *COLUMNS]
        return {row["report_id"]: row for row in reader}


def test_label_reports_bad_rows_and_labels_the_others(tmp_path):
    src, out = tmp_path / "reports.csv", tmp_path / "labels.csv"
    write_reports(src, [
        b'r1,"No pneumothorax. Small left effusion.","Mild cardiomegaly, possible pneumonia.",\n',
        b"r2,Pl\xe9ural effusion (Latin-1 bytes),None,\n",  # not UTF-8
        b"r3,,,\n",  # nothing to label
        b'r4,"Lungs are clear.\nNo effusion.",No acute disease.,\n',  # a record over two lines
        b"r5,Large hiatal hernia.,,\n",
    ])  # fmt: skip
    done = run(["label", str(src), "--text", "findings,impression", "--id", "report_id", "--out", str(out)])
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == {"out": str(out), "labelled": 3, "reported": 2}
    problems = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(p["line"], p["id"], p["code"]) for p in problems] == [(3, "r2", "not_utf8"), (4, "r3", "empty_text")]
    assert "findings" in problems[0]["message"]

    labels = read_labels(out)
    assert list(labels) == ["r1", "r4", "r5"]
    r1 = labels["r1"]
    assert (r1["Pneumothorax"], r1["Effusion"], r1["Cardiomegaly"], r1["Pneumonia"]) == ("0", "1", "1", "-1")
    assert (r1["Edema"], r1["No Finding"]) == ("", "")
    assert labels["r4"]["Effusion"] == "0" and labels["r4"]["No Finding"] == "1"
    assert labels["r5"]["Hernia"] == "1" and labels["r5"]["No Finding"] == ""
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # labels of patients' reports: this user only


def test_label_all_good_exits_0(tmp_path):
    src, out = tmp_path / "reports.csv", tmp_path / "labels.csv"
    write_reports(src, [b"a,No effusion.,Normal.,\n", b"b,Small effusion.,,\n"])
    done = run(["label", str(src), "--text", "findings", "--id", "report_id", "--out", str(out)])
    assert (done.returncode, done.stderr) == (0, "")
    assert {k: v["Effusion"] for k, v in read_labels(out).items()} == {"a": "0", "b": "1"}


def test_usage_errors_exit_2_and_name_the_columns(tmp_path):
    src, out = tmp_path / "reports.csv", tmp_path / "labels.csv"
    write_reports(src, [b"a,No effusion.,Normal.,\n"])
    missing = run(["label", str(src), "--text", "report", "--id", "report_id", "--out", str(out)])
    assert missing.returncode == 2
    assert "no column 'report'" in missing.stderr
    assert "'report_id', 'findings', 'impression', 'mesh'" in missing.stderr
    assert not out.exists()

    indication = run(["label", str(src), "--text", "indication,findings", "--id", "report_id", "--out", str(out)])
    assert indication.returncode == 2 and "'indication'" in indication.stderr

    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("report_id,findings\na,No effusion.\n".encode("utf-16"))
    not_utf8 = run(["label", str(utf16), "--text", "findings", "--id", "report_id", "--out", str(out)])
    assert not_utf8.returncode == 2 and "not UTF-8" in not_utf8.stderr

    absent = run(["label", str(tmp_path / "none.csv"), "--text", "findings", "--id", "report_id", "--out", str(out)])
    assert absent.returncode == 2 and "cannot read" in absent.stderr


def test_evaluate_prints_one_json_object(tmp_path):
    src = tmp_path / "reports.csv"
    write_reports(src, [
        b"a,No pneumothorax. Small effusion.,,Pleural Effusion/left/small\n",
        b"b,No effusion.,,normal\n",
        b"c,Possible effusion.,,normal\n",
        b"d,Clear lungs.,,No Indexing\n",
    ])  # fmt: skip
    done = run(["evaluate", str(src), "--text", "findings", "--id", "report_id", "--mesh", "mesh", "--split", "all"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["reports"], result["not_indexed"], result["reported"]) == (3, 1, 0)
    effusion = result["labeller"]["findings"]["Effusion"]
    assert (effusion["n_positives"], effusion["precision"], effusion["recall"]) == (1, 1.0, 1.0)
    assert result["labeller_uncertain_as_present"]["findings"]["Effusion"]["precision"] == 0.5
    assert result["keyword"]["findings"]["Effusion"]["precision"] == round(1 / 3, 4)
    assert result["keyword"]["findings"]["Pneumothorax"]["fp"] == 1
    assert result["labeller"]["findings"]["No Finding"]["tp"] == 1  # "b"; "c" is uncertain, so not "No Finding"
