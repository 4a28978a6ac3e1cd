"""Priors: a patient's studies are linked by (issuer, Patient ID) from DICOM headers or a metadata CSV, the
worklist's "has prior", and the AI's change between a study and its prior."""

import datetime as dt
from pathlib import Path

import pydicom
import pytest

from db import engine as dbe
from db import repo
from services import analysis, importer, priors, sidecar

LIMIT = 50 * 2**20
FOLLOWUP_ISSUER = "ieee8023-covid-chestxray"


HOSP = "HOSP-A"


def _dicom_copy(shared_data, tmp_path, name, patient_id, date, issuer=HOSP, sex=None, view=None):
    ds = pydicom.dcmread(shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm")
    ds.PatientID, ds.StudyDate = patient_id, date
    if issuer:
        ds.IssuerOfPatientID = issuer
    if sex is not None:
        ds.PatientSex = sex
    if view is not None:
        ds.ViewPosition = view
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))
    ds.PixelData = ds.PixelData[:-2] + bytes([len(name), 7])  # other pixels: not a duplicate of the others
    ds.save_as(tmp_path / name)
    return tmp_path / name


def _study(ctx, path, metadata=None):
    (r,) = importer.import_paths(ctx.engine, ctx.store, [path], max_bytes=LIMIT, metadata=metadata)
    assert r.status == "imported", r.reason
    return r.study_id


def _worklist(ctx) -> dict[int, bool]:
    with dbe.read(ctx.engine) as s:
        rows, _ = repo.list_studies(s, repo.WorklistFilter(), limit=500)
    return {r.study_id: r.has_prior for r in rows}


def test_dicom_studies_of_one_patient_are_linked_by_patient_id_and_issuer(ctx, shared_data, tmp_path):
    first = _study(ctx, _dicom_copy(shared_data, tmp_path, "a.dcm", "PAT-1", "20240105"))
    second = _study(ctx, _dicom_copy(shared_data, tmp_path, "b.dcm", "PAT-1", "20240301"))
    same_day = _study(ctx, _dicom_copy(shared_data, tmp_path, "c.dcm", "PAT-1", "20240301"))
    elsewhere = _study(ctx, _dicom_copy(shared_data, tmp_path, "d.dcm", "PAT-1", "20240601", issuer="OTHER-HOSP"))
    other = _study(ctx, _dicom_copy(shared_data, tmp_path, "e.dcm", "PAT-2", "20240601"))
    has_prior = _worklist(ctx)
    assert has_prior == {first: False, second: True, same_day: True, elsewhere: False, other: False}
    p = priors.find(ctx.engine, second)
    assert (p.study_id, p.study_date, p.days_before) == (first, dt.date(2024, 1, 5), 56)
    with dbe.read(ctx.engine) as s:  # the prior's film to show
        assert p.image["id"] == repo.study_images(s, first)[0].id
    assert priors.find(ctx.engine, first) is None
    # Another issuer's PAT-1 is another patient: not a prior, not counted among the patient's studies.
    assert priors.find(ctx.engine, elsewhere) is None
    with dbe.read(ctx.engine) as s:
        assert {x.id for x in repo.patient_studies(s, second)} == {first, same_day}


def test_undated_studies_are_never_priors(ctx, shared_data, tmp_path):
    undated = _study(ctx, _dicom_copy(shared_data, tmp_path, "u.dcm", "PAT-3", ""))
    dated = _study(ctx, _dicom_copy(shared_data, tmp_path, "v.dcm", "PAT-3", "20240101"))
    assert _worklist(ctx) == {undated: False, dated: False}
    with dbe.read(ctx.engine) as s:  # but they are the same patient's
        assert [x.id for x in repo.patient_studies(s, dated)] == [undated]


def test_the_same_patient_id_without_an_issuer_links_nobody(ctx, shared_data, tmp_path):
    # Two imports with the same bare id (DICOMs without the tag, PNGs imported without --issuer): two people, as
    # likely as one. A placeholder id links nobody even with an issuer.
    bare = [_study(ctx, _dicom_copy(shared_data, tmp_path, f"n{i}.dcm", "75", d, issuer=None))
            for i, d in enumerate(("20240105", "20240301"))]  # fmt: skip
    anon = [_study(ctx, _dicom_copy(shared_data, tmp_path, f"a{i}.dcm", pid, d))
            for i, (pid, d) in enumerate((("ANON", "20240105"), ("anon ", "20240301"), ("000", "20240101"),
                                          ("000", "20240401"), ("UNKNOWN", "20240101"), ("Unknown", "20240501")))]  # fmt: skip
    assert _worklist(ctx) == dict.fromkeys(bare + anon, False)
    with dbe.read(ctx.engine) as s:
        assert all(repo.patient_studies(s, i) == [] for i in bare + anon)
    assert priors.find(ctx.engine, bare[1]) is None


def test_the_same_patient_id_and_issuer_with_another_sex_is_not_linked(ctx, shared_data, tmp_path):
    first = _study(ctx, _dicom_copy(shared_data, tmp_path, "f.dcm", "PAT-9", "20240105", sex="F"))
    male = _study(ctx, _dicom_copy(shared_data, tmp_path, "m.dcm", "PAT-9", "20240301", sex="M"))
    unknown = _study(ctx, _dicom_copy(shared_data, tmp_path, "u.dcm", "PAT-9", "20240401", sex=""))
    assert priors.find(ctx.engine, male) is None
    assert priors.find(ctx.engine, unknown).study_id == male  # a sex not recorded contradicts nothing
    with dbe.read(ctx.engine) as s:
        assert [x.id for x in repo.patient_studies(s, first)] == [unknown]


def test_frontal_is_compared_with_frontal_only(ctx, shared_data, tmp_path):
    pa = _study(ctx, _dicom_copy(shared_data, tmp_path, "pa.dcm", "PAT-7", "20240105", view="PA"))
    lat = _study(ctx, _dicom_copy(shared_data, tmp_path, "ll.dcm", "PAT-7", "20240201", view="LL"))
    ap = _study(ctx, _dicom_copy(shared_data, tmp_path, "ap.dcm", "PAT-7", "20240301", view="AP"))
    # The latest earlier study is a lateral: the frontal one before it is the prior.
    p = priors.find(ctx.engine, ap, "AP")
    assert (p.study_id, p.image["view"], p.note) == (pa, "PA", None)
    # A lateral current film has no comparable prior, and says so.
    p = priors.find(ctx.engine, lat, "LL")
    assert p.image is None and not p.comparable and "no comparable prior" in p.note and "frontal" in p.note
    # Only a lateral before: no comparable prior either.
    nl = _study(ctx, _dicom_copy(shared_data, tmp_path, "nl.dcm", "PAT-8", "20240105", view="LATERAL"))
    assert nl and priors.find(ctx.engine, _study(ctx, _dicom_copy(shared_data, tmp_path, "n2.dcm", "PAT-8",
                                                                  "20240201", view="PA")), "PA").image is None
    # A film of unrecorded view is compared, with a word that its view is not recorded.
    nv = _study(ctx, _dicom_copy(shared_data, tmp_path, "nv.dcm", "PAT-7", "20240401", view=""))
    p = priors.find(ctx.engine, nv, None)
    assert p.study_id == ap and p.comparable and p.note == priors.VIEW_NOT_RECORDED
    assert p.patient_id == "PAT-7"


def test_followup_films_are_linked_by_the_csv_patient_column_and_dated_by_offset(ctx, shared_data):
    folder = shared_data / "covid_followup"
    meta = sidecar.load(folder / "metadata.csv", issuer=FOLLOWUP_ISSUER, day_zero=dt.date(2020, 1, 1))
    names = [f"auntminnie-{x}-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpg" for x in "abcd"]
    assert [meta[n]["study_date"] for n in names] == [dt.date(2020, 1, d) for d in (1, 4, 6, 7)]  # offsets 0 3 5 6
    assert meta[names[0]] | {"study_date": None} == {
        "patient_id": "2", "issuer_of_patient_id": FOLLOWUP_ISSUER, "patient_age_years": 65, "patient_sex": "M",
        "view_position": "PA", "study_date": None,
    }  # fmt: skip
    ids = [_study(ctx, folder / "images" / n, meta) for n in names]
    assert [priors.find(ctx.engine, i) and priors.find(ctx.engine, i).study_id for i in ids] == [None, *ids[:3]]
    assert priors.find(ctx.engine, ids[3]).others == 2
    # NIH patient 100 and the collection's patient 100 share an id, not an issuer: not linked.
    nih = _study(ctx, shared_data / "nih" / "images" / "00000100_000.png", sidecar.load(shared_data / "nih" / "labels.csv"))
    hundred = next(n for n, v in meta.items() if v.get("patient_id") == "100" and (folder / "images" / n).is_file())
    covid = _study(ctx, folder / "images" / hundred, meta)
    with dbe.read(ctx.engine) as s:
        assert (repo.get_study(s, nih).patient_id, repo.get_study(s, covid).patient_id) == ("100", "100")
        assert repo.patient_studies(s, nih) == [] and repo.patient_studies(s, covid) == []


def test_the_followup_import_selects_frontal_films_of_patients_with_two_or_more(shared_data):
    from scripts.followup_films import films

    folder = shared_data / "covid_followup"
    chosen = films(folder / "metadata.csv", folder / "images")
    assert len(chosen) == 213 and all(f.is_file() for f in chosen)
    meta = sidecar.load(folder / "metadata.csv")
    assert {meta[f.name]["view_position"] for f in chosen} == {"PA", "AP", "AP SUPINE"}
    assert len({meta[f.name]["patient_id"] for f in chosen}) == 77


@pytest.mark.parametrize("bad", ["offset\nx.png,soon\n", "StudyDate\nx.png,yesterday\n", "offset\nx.png,inf\n",
                                 "offset\nx.png,1e400\n", "offset\nx.png,-nan\n",
                                 "offset\nx.png,99999999999999999999\n", "offset\nx.png,36501\n"])
def test_a_bad_date_or_offset_in_the_csv_is_a_clear_error(tmp_path, bad):
    head, row = bad.split("\n")[:2]
    (tmp_path / "m.csv").write_text(f"file,{head}\n{row}\n")
    with pytest.raises(sidecar.SidecarError, match="line 2"):
        sidecar.load(tmp_path / "m.csv", day_zero=dt.date(2020, 1, 1))


def _model(version="1.0.0"):
    return {"id": "clf", "version": version, "weights_sha256": "ab" * 32}


def _analysis(probs, ctr=None, version="1.0.0", problems=()):
    anatomy = {"model": _model(), "problems": list(problems), "ctr": None if ctr is None else {"ratio": ctr}}
    return analysis.Analysis(
        findings={"model": _model(version), "probabilities": probs}, anatomy=anatomy,
        thresholds={k: 0.5 for k in probs},
    )  # fmt: skip


def test_the_ai_change_table_lists_scores_then_and_now_biggest_change_first():
    then = _analysis({"Effusion": 0.2, "Mass": 0.40, "Pneumonia": 0.6}, ctr=0.48)
    now = _analysis({"Effusion": 0.7, "Mass": 0.41, "Pneumonia": 0.3}, ctr=0.55)
    c = priors.ai_change(now, then)
    assert [r["Finding"] for r in c.rows] == ["Effusion", "Pneumonia", "Mass"]
    effusion = c.rows[0]
    assert (effusion["Then"], effusion["Now"]) == (0.2, 0.7) and effusion["Change"] == pytest.approx(0.5)
    assert (effusion["Positive then"], effusion["Positive now"]) == (False, True)
    assert c.ctr == {"then": 0.48, "now": 0.55, "change": pytest.approx(0.07)}
    assert c.comparable and c.note is None


def test_scores_of_another_model_version_and_implausible_ctrs_are_not_compared():
    then = _analysis({"Effusion": 0.2}, ctr=0.48, version="0.9.0", problems=["heart outside the lungs"])
    now = _analysis({"Effusion": 0.7}, ctr=0.55)
    c = priors.ai_change(now, then)
    assert not c.comparable and "another model version" in c.note
    assert c.rows == [{"Finding": "Effusion", "Then": None, "Now": 0.7, "Change": None, "Positive then": None,
                       "Positive now": True}]  # fmt: skip
    assert c.ctr == {"then": None, "now": 0.55, "change": None}


def test_the_import_command_links_and_dates_followup_films(app_env, shared_data, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from services import context, settings

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **app_env},
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    assert cli("db", "upgrade").returncode == 0
    folder = shared_data / "covid_followup"
    films = [str(folder / "images" / f"covid-19-pneumonia-49-day{d}.jpg") for d in (4, 8)]
    bad = cli("import", *films, "--metadata", str(folder / "metadata.csv"), "--day-zero", "January 1st")
    assert bad.returncode == 2 and "'January 1st' is not a date" in bad.stderr and not bad.stdout  # nothing imported
    (tmp_path / "m.csv").write_text(f"file,patientid,offset\n{Path(films[0]).name},143,4\n{Path(films[1]).name},143,1e400\n")
    bad = cli("import", *films, "--metadata", str(tmp_path / "m.csv"), "--day-zero", "2020-01-01")
    assert bad.returncode == 2 and "m.csv line 3: offset '1e400'" in bad.stderr and not bad.stdout
    assert "Traceback" not in bad.stderr
    done = cli("import", *films, "--metadata", str(folder / "metadata.csv"), "--issuer", FOLLOWUP_ISSUER,
               "--day-zero", "2020-01-01")  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line)["study_id"] for line in done.stdout.splitlines())
    p = priors.find(context.build(settings.load(app_env)).engine, second)
    assert (p.study_id, p.study_date, p.days_before) == (first, dt.date(2020, 1, 5), 4)
