"""Shadow mode in the viewer through AppTest: a researcher sees a candidate's scores beside the active version's,
labelled as candidate with id, version and sha256 and "Research use only"; a radiologist never does, and the
server refuses the candidate's scores to that role whatever the page shows."""

import json

import pytest

from db import accounts
from db import engine as dbe
from inference.registry import Registry
from inference.runner import Runner
from services import importer, models_admin, shadow
from tests.conftest import REPO, SHARED
from tests.screens.test_app import env, signed_in  # noqa: F401  (fixture)

IMAGE = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
START = REPO / "assets" / "models" / "cxr14_mobilenetv3_multilabel" / "1.1.0"
CANDIDATE = "cxr14_mobilenetv3_multilabel@1.1.0-cand"
SEG_START = REPO / "assets" / "models" / "anatomy_unet_smp" / "1.3.0"
SEG_CANDIDATE = "anatomy_unet_smp@1.3.0-cand"


def models_with_candidates(folder):
    """The shared weights and two candidates under trained/: 1.1.0's classifier weights and 1.3.0's anatomy
    weights (one view), each recorded as learnt from a labelling task."""
    models = folder / "models_with_candidate"
    models.mkdir()
    for pt in (SHARED / "models").glob("*.pt"):
        (models / pt.name).symlink_to(pt)
    for start, version, task, drop in ((START, "1.1.0-cand", "corrections", ()),
                                       (SEG_START, "1.3.0-cand", "outlines", ("variants", "test_time_views"))):  # fmt: skip
        meta = json.loads((start / "model.json").read_text())
        cand = models / "trained" / meta["model_id"] / version
        cand.mkdir(parents=True)
        (cand / meta["weights_file"]).symlink_to(start / meta["weights_file"])
        meta = {k: v for k, v in meta.items() if k not in drop}
        meta |= {"version": version, "status": "candidate",
                 "from_task": {"task": task, "trained_on": [1], "held_out": [2], "annotations": []}}  # fmt: skip
        (cand / "model.json").write_text(json.dumps(meta))
    return models


@pytest.fixture
def app_env(app_env, tmp_path):
    return app_env | {"CXR_REVIEW_MODELS_DIR": str(models_with_candidates(tmp_path))}


def _review(study_id, who, password):
    at = signed_in(who, password)
    at.session_state["study_id"] = study_id
    at.switch_page("screens/review.py").run()
    at.toggle(key=f"ai_on_{study_id}").set_value(True).run(timeout=240)
    assert not at.exception
    return at


def test_a_researcher_sees_the_candidates_scores_and_a_radiologist_never_does(env, shared_data):  # noqa: F811
    (r,) = importer.import_paths(env.engine, env.store, [shared_data / "dicom" / IMAGE], max_bytes=2**30)
    with dbe.read(env.engine) as sess:
        boss = accounts.get_user_by_name(sess, "boss").id  # the env fixture's admin
    # the built-in active (an admin's choice): its scores are softmax shares
    models_admin.set_active(env, Registry(env.settings.models_dir), "classification", "cxr15_mobilenetv3@1.0.0", boss)
    at = _review(r.study_id, "res", "researcher-pw")
    at.toggle(key="shadow_on").set_value(True).run(timeout=120)
    assert not at.exception
    assert at.selectbox(key="shadow_candidate").value == CANDIDATE
    table = next(df.value for df in at.dataframe if "Candidate" in df.value.columns)
    scored = table[table["Finding"] != "No Finding"]  # the candidate is multi-label: it has no "No Finding"
    assert len(scored) == 14 and scored["Candidate"].between(0, 1).all()
    # the built-in's scores are softmax shares, the candidate's calibrated probabilities: no difference column
    assert "Candidate minus active" not in table.columns
    assert any(c.value.startswith("No difference column: the active version's scores are softmax") for c in at.caption)
    sha = Registry(env.settings.models_dir).resolve(CANDIDATE).weights_sha256
    (note,) = [c.value for c in at.caption if c.value.startswith("CANDIDATE")]
    assert CANDIDATE in note and sha in note and "Research use only" in note

    # with a calibrated version active, a difference per finding
    calibrated = "cxr14_mobilenetv3_multilabel@1.3.0"
    models_admin.set_active(env, Registry(env.settings.models_dir), "classification", calibrated, boss)
    at = _review(r.study_id, "res", "researcher-pw")
    at.toggle(key="shadow_on").set_value(True).run(timeout=120)
    table = next(df.value for df in at.dataframe if "Candidate" in df.value.columns)
    diff = (table["Candidate"] - table["Active"]).to_numpy()
    assert table["Candidate minus active"].to_numpy() == pytest.approx(diff, abs=1e-9)

    at = _review(r.study_id, "rad", "radiologist-pw")
    assert not [t for t in at.toggle if t.key == "shadow_on"]
    assert not any("Candidate minus active" in df.value.columns for df in at.dataframe)
    assert not any(c.value.startswith("CANDIDATE") for c in at.caption)
    runner = Runner(Registry(env.settings.models_dir), "cpu")
    for role in ("radiologist", "annotator"):
        with pytest.raises(shadow.NotAllowed, match="researchers only"):
            shadow.candidate_scores(env, runner, {"id": r.image_id}, CANDIDATE, role)


def test_a_researcher_sees_an_anatomy_candidates_outlines_and_agreement_and_a_radiologist_never_does(env, shared_data):  # noqa: F811
    (r,) = importer.import_paths(env.engine, env.store, [shared_data / "dicom" / IMAGE], max_bytes=2**30)
    at = _review(r.study_id, "res", "researcher-pw")
    at.toggle(key="shadow_seg_on").set_value(True).run(timeout=120)
    assert not at.exception and not at.error
    assert at.selectbox(key="shadow_seg_candidate").value == SEG_CANDIDATE
    table = next(df.value for df in at.dataframe if "Dice, candidate vs active" in df.value.columns)
    dice = dict(zip(table["Structure"], table["Dice, candidate vs active"], strict=True))
    # the active default is 1.3.0 with one view; the candidate is the same weights: near-identical outlines
    assert dice["lungs"] > 0.95 and dice["heart"] > 0.9
    assert table["Note"].iloc[-1].startswith("active ")
    (note,) = [c.value for c in at.caption if c.value.startswith("CANDIDATE")]
    sha = Registry(env.settings.models_dir).resolve(SEG_CANDIDATE).weights_sha256
    assert SEG_CANDIDATE in note and sha in note and "Research use only" in note

    at = _review(r.study_id, "rad", "radiologist-pw")
    assert not [t for t in at.toggle if t.key == "shadow_seg_on"]
    runner = Runner(Registry(env.settings.models_dir), "cpu")
    with pytest.raises(shadow.NotAllowed, match="researchers only"):
        shadow.candidate_anatomy(env, runner, {"id": r.image_id}, SEG_CANDIDATE, "radiologist", {})
    with pytest.raises(shadow.ShadowError, match="not a segmentation candidate"):
        shadow.candidate_anatomy(env, runner, {"id": r.image_id}, CANDIDATE, "researcher", {})
