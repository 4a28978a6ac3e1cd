"""The viewer's prior through AppTest: a prior whose stored film is gone or no longer decodes is named in the
prior's pane ("The prior cannot be shown: …"); the current film, its AI verdicts and report still render."""

import pydicom
import pytest

from db import engine as dbe
from db import repo
from services import importer
from tests.screens.test_app import env, signed_in  # noqa: F401  (fixture)

SOURCE = "nih_dx_chest_1024_nofinding_nccid.dcm"  # native pixels: a changed byte is another film


def _film(shared_data, tmp_path, name: str, date: str, view: str = "PA"):
    ds = pydicom.dcmread(shared_data / "dicom" / SOURCE)
    ds.PatientID, ds.IssuerOfPatientID, ds.StudyDate, ds.ViewPosition = "PAT-1", "HOSP-A", date, view
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))
    ds.save_as(tmp_path / name)
    return tmp_path / name


def _open_with_a_broken_prior(env, shared_data, tmp_path, broken: str, view: str = "PA"):  # noqa: F811
    # Two films of one patient (a copy with the same pixels would be a duplicate: the current's differ).
    films = [_film(shared_data, tmp_path, "prior.dcm", "20240105"), _film(shared_data, tmp_path, "now.dcm",
                                                                          "20240301", view)]  # fmt: skip
    ds = pydicom.dcmread(films[1])
    ds.PixelData = ds.PixelData[:-2] + b"\x01\x02"  # other pixels: not a duplicate of the prior
    ds.save_as(films[1])
    results = list(importer.import_paths(env.engine, env.store, films, max_bytes=2**30))
    assert [r.status for r in results] == ["imported"] * 2
    prior_id, current_id = (r.study_id for r in results)
    with dbe.read(env.engine) as s:
        path = env.store.path_for(repo.study_images(s, prior_id)[0].file_sha256)
    if broken != "no":
        path.unlink()
    if broken == "undecodable":
        path.write_bytes(b"DICM" + b"\x00" * 500)
    at = signed_in("rad", "radiologist-pw")
    at.session_state["study_id"] = current_id
    at.switch_page("screens/review.py").run()
    assert not at.exception
    return at, current_id


@pytest.mark.parametrize("broken", ["missing", "undecodable"])
def test_a_prior_that_cannot_be_read_is_named_in_its_pane_and_the_page_renders(env, shared_data, tmp_path, broken):  # noqa: F811
    at, sid = _open_with_a_broken_prior(env, shared_data, tmp_path, broken)
    at.toggle(key=f"prior_on_{sid}").set_value(True).run()
    assert not at.exception, at.exception
    (err,) = [e.value for e in at.error if "prior" in e.value]
    assert err.startswith("The prior cannot be shown: ")
    assert ("missing" in err) == (broken == "missing")
    assert any(b.label == "Mark reviewed" for b in at.button)  # the rest of the page is there


def test_with_the_ai_on_a_missing_prior_leaves_the_current_verdicts_and_report(env, shared_data, tmp_path):  # noqa: F811
    at, sid = _open_with_a_broken_prior(env, shared_data, tmp_path, "missing")
    at.toggle(key=f"prior_on_{sid}").set_value(True).run()
    at.radio(key=f"prior_mode_{sid}").set_value("aligned").run()
    at.toggle(key=f"ai_on_{sid}").set_value(True).run(timeout=240)  # the models run on the current film only
    assert not at.exception, at.exception
    assert any(e.value.startswith("The prior cannot be shown: its stored file is missing") for e in at.error)
    assert any("Your verdicts" in m.value for m in at.markdown)
    assert at.text_area(key=f"report_text_{sid}").value  # the current study's report draft
    assert at.button(key="quick_accept")  # the AI statements of the current film can be judged


def test_a_lateral_current_film_has_no_comparable_prior_and_says_so(env, shared_data, tmp_path):  # noqa: F811
    at, sid = _open_with_a_broken_prior(env, shared_data, tmp_path, "no", view="LL")
    assert [i.value for i in at.info if "prior" in i.value] == [
        "No comparable prior: this film is a LL view, and priors are compared frontal with frontal."]  # fmt: skip
    assert not [t for t in at.toggle if t.key == f"prior_on_{sid}"]
