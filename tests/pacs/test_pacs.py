"""PACS over DICOMweb against a real Orthanc: studies sent with dcmtk's storescu, found and retrieved with
`cxr-review pacs`, analysed by the real models, and their SEG / SR stored back and read again from Orthanc."""

from __future__ import annotations

import base64
import json

import highdicom as hd
import pytest
from pydicom.sr.codedict import codes
from sqlalchemy import text as text_sql

from db import audit
from db import engine as dbe
from services import context, settings
from services import pacs as pacs_svc
from tests.pacs import orthanc_server
from tests.pacs.conftest import cli, lines, variant
from tests.servers import free_port
from tests.services.test_annotation_cli import _dciodvfy_errors

DX = "nih_dx_chest_1024_nofinding_nccid.dcm"
CR = "siim_cr_chest_pa_1024_jpeg_mono2.dcm"


def _ctx(env):
    return context.build(settings.load(env))


def test_query_retrieve_analyse_and_store_seg_sr_back(pacs, pacs_env, shared_data, tmp_path):
    pacs.store(shared_data / "dicom" / DX, shared_data / "dicom" / CR)

    found = cli(["pacs", "query", "--modality", "DX"], pacs_env)
    assert found.returncode == 0, found.stderr
    (hit,) = lines(found)
    assert hit["modalities"] == ["DX"] and hit["n_instances"] == 1 and hit["study_date"] is None
    study_uid = hit["study_instance_uid"]
    # The CR study is found by its patient and its date, the DX one (no Study Date) not from a date on.
    cr = lines(cli(["pacs", "query", "--since", "19000101"], pacs_env))
    assert [h["modalities"] for h in cr] == [["CR"]] and cr[0]["study_date"] == "19010101"
    assert (
        lines(cli(["pacs", "query", "--patient-id", "Covid0000"], pacs_env))[0]["study_instance_uid"]
        == study_uid
    )
    assert lines(cli(["pacs", "query", "--patient-id", "nobody"], pacs_env)) == []

    got = cli(["pacs", "retrieve", study_uid], pacs_env)
    assert got.returncode == 0, got.stderr
    (line,) = lines(got)
    assert line["status"] == "imported" and line["study_instance_uid"] == study_uid and line["image_id"]
    assert "1 file" in got.stderr or "imported" in got.stderr
    again = cli(["pacs", "retrieve", study_uid], pacs_env)  # the import's de-duplication holds
    assert again.returncode == 0 and [x["status"] for x in lines(again)] == ["duplicate"]

    ctx = _ctx(pacs_env)
    from db.models import Image
    from inference.registry import Registry
    from inference.runner import Runner
    from services import analysis

    with dbe.read(ctx.engine) as s:
        image = s.get(Image, line["image_id"])
        row = {"id": image.id, "pixel_sha256": image.pixel_sha256, "file_sha256": image.file_sha256}
        assert image.modality == "DX" and image.rows == 1024
        sop_uid = image.sop_instance_uid
    result = analysis.analyse(ctx, Runner(Registry(ctx.settings.models_dir), "cpu"), row)
    if result.findings is None or result.anatomy is None:
        pytest.skip(
            f"the shared classification / segmentation models are not available: {result.unavailable}"
        )
    cls, seg_model = result.findings["model"], result.anatomy["model"]

    sent = cli(["pacs", "store", "--study", study_uid, "--what", "seg,sr"], pacs_env)
    assert sent.returncode == 0, sent.stderr
    objects = lines(sent)
    assert sorted(o["kind"] for o in objects) == ["seg", "sr"]
    assert all(o["status"] == "stored" and o["source"] == "ai" for o in objects)

    # Read back from Orthanc (WADO-RS) and parsed with highdicom.
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (orthanc_server.USER, orthanc_server.PASSWORD)
    dw = DICOMwebClient(pacs.dicomweb, session=session)
    by_kind = {
        o["kind"]: dw.retrieve_instance(study_uid, o["series_instance_uid"], o["sop_instance_uid"])
        for o in objects
    }
    seg = hd.seg.Segmentation.from_dataset(by_kind["seg"])
    assert seg.StudyInstanceUID == study_uid
    labels = {d.SegmentLabel for d in seg.SegmentSequence}
    assert labels and labels <= {"lungs", "heart", "clavicles"}
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == (seg_model["id"], seg_model["version"])
    assert algo.AlgorithmParameters == f"weights_sha256={seg_model['weights_sha256']}"
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == sop_uid

    for (
        kind,
        ds,
    ) in by_kind.items():  # valid objects, as the PACS holds them (the source file's own faults not copied)
        ds.save_as(tmp_path / f"{kind}.dcm", enforce_file_format=True)
        assert _dciodvfy_errors(tmp_path / f"{kind}.dcm") == [], kind

    sr = hd.sr.Comprehensive3DSR.from_dataset(by_kind["sr"])
    flat = json.dumps(by_kind["sr"].to_json_dict())
    assert cls["id"] in flat and cls["version"] in flat and f"weights_sha256={cls['weights_sha256']}" in flat
    observer = [
        i
        for i in sr.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == codes.DCM.DeviceObserverName.value
    ]
    assert [str(i.TextValue) for i in observer] == [cls["id"]]

    with dbe.read(ctx.engine) as s:
        rows = audit.events(s, actions=("pacs_retrieve", "pacs_store"))
    assert sorted(r.action for r in rows) == ["pacs_retrieve", "pacs_retrieve", "pacs_store"]
    assert all(study_uid not in (r.details + (r.target or "")) for r in rows)  # no UIDs in the audit


def test_a_series_that_is_not_cr_or_dx_is_skipped_with_the_reason(pacs, pacs_env, shared_data, tmp_path):
    src = shared_data / "dicom" / DX
    ct = variant(src, tmp_path / "ct.dcm", Modality="CT", SeriesInstanceUID="1.2.826.0.1.3680043.8.498.1")
    pacs.store(src, ct)
    (hit,) = lines(cli(["pacs", "query"], pacs_env))
    assert sorted(hit["modalities"]) == ["CT", "DX"] and hit["n_instances"] == 2
    got = cli(["pacs", "retrieve", hit["study_instance_uid"]], pacs_env)
    assert got.returncode == 0, got.stderr
    out = lines(got)
    assert [x["status"] for x in out] == ["imported", "skipped"]
    assert out[1]["modality"] == "CT" and "not CR or DX" in out[1]["reason"]

    # A study with nothing but such series: nothing to retrieve, said so, exit 1.
    only_ct = variant(src, tmp_path / "ct2.dcm", Modality="CT", StudyInstanceUID="1.2.826.0.1.3680043.8.498.2",
                      SeriesInstanceUID="1.2.826.0.1.3680043.8.498.3")  # fmt: skip
    pacs.store(only_ct)
    assert lines(cli(["pacs", "query", "--patient-id", "Covid0000"], pacs_env))[0]["modalities"] != ["CT"]
    # Several studies in one call, in the order given (the next one downloads while one is imported).
    none = cli(["pacs", "retrieve", "1.2.826.0.1.3680043.8.498.2", hit["study_instance_uid"]], pacs_env)
    assert none.returncode == 1
    out = lines(none)
    ct_uid, dx_uid = "1.2.826.0.1.3680043.8.498.2", hit["study_instance_uid"]
    assert [(x["study_instance_uid"], x["status"]) for x in out] == [
        (ct_uid, "skipped"), (ct_uid, "failed"), (dx_uid, "duplicate"), (dx_uid, "skipped"),
    ]  # fmt: skip
    assert out[1]["code"] == "no_cr_dx" and "no CR or DX series" in none.stderr


def test_a_study_over_the_instance_cap_is_refused_whole(pacs, pacs_env, shared_data, tmp_path):
    src = shared_data / "dicom" / DX
    pacs.store(*(variant(src, tmp_path / f"{i}.dcm") for i in range(3)))
    (hit,) = lines(cli(["pacs", "query"], pacs_env))
    assert hit["n_instances"] == 3
    capped = cli(
        ["pacs", "retrieve", hit["study_instance_uid"]], {**pacs_env, "CXR_REVIEW_PACS_MAX_INSTANCES": "2"}
    )
    assert capped.returncode == 1
    (line,) = lines(capped)
    assert line["code"] == "too_many_instances" and "3 instances, over the limit of 2" in line["reason"]
    assert "CXR_REVIEW_PACS_MAX_INSTANCES" in line["reason"]
    ctx = _ctx(pacs_env)
    from db.models import Image

    with dbe.read(ctx.engine) as s:
        assert s.query(Image).count() == 0  # nothing half-imported
    ok = cli(["pacs", "retrieve", hit["study_instance_uid"]], pacs_env)
    assert ok.returncode == 0 and [x["status"] for x in lines(ok)] == ["imported"] * 3


def test_wrong_password_is_a_clear_error_without_the_password(pacs, pacs_env, shared_data):
    pacs.store(shared_data / "dicom" / DX)
    wrong = "Wr0ng-Pa55word-xyz"
    for env in ({**pacs_env, "CXR_REVIEW_PACS_PASSWORD": wrong},
                {**pacs_env, "CXR_REVIEW_PACS_PASSWORD": "",
                 "CXR_REVIEW_PACS_URL": pacs.dicomweb.replace("http://", f"http://{orthanc_server.USER}:{wrong}@")}):  # fmt: skip
        done = cli(["pacs", "query"], env)
        assert done.returncode == 2 and done.stdout == ""
        assert "refused the user name or password" in done.stderr
        assert wrong not in done.stderr and orthanc_server.PASSWORD not in done.stderr
        assert pacs.dicomweb in done.stderr  # the server named, without userinfo
    # The right password inside the URL works the same as the variables.
    url_env = {**pacs_env, "CXR_REVIEW_PACS_USER": "", "CXR_REVIEW_PACS_PASSWORD": "",
               "CXR_REVIEW_PACS_URL": pacs.dicomweb.replace("http://", f"http://{orthanc_server.USER}:{orthanc_server.PASSWORD}@")}  # fmt: skip
    done = cli(["pacs", "query"], url_env)
    assert done.returncode == 0 and len(lines(done)) == 1
    assert repr(settings.load(url_env)).count(orthanc_server.PASSWORD) == 0


def test_a_stopped_or_slow_pacs_is_a_clear_error(pacs_env, tmp_path):
    import socket

    port = free_port()  # nothing listens there: as a stopped Orthanc
    down = cli(["pacs", "query"], {**pacs_env, "CXR_REVIEW_PACS_URL": f"http://127.0.0.1:{port}/dicom-web"})
    assert (
        down.returncode == 2 and f"cannot reach the PACS at http://127.0.0.1:{port}/dicom-web" in down.stderr
    )
    assert "Traceback" not in down.stderr
    failed = cli(
        ["pacs", "retrieve", "1.2.3"],
        {**pacs_env, "CXR_REVIEW_PACS_URL": f"http://127.0.0.1:{port}/dicom-web"},
    )
    assert failed.returncode == 1 and lines(failed)[-1]["code"] == "unreachable"

    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        slow = cli(
            ["pacs", "query"], {**pacs_env, "CXR_REVIEW_PACS_URL": url, "CXR_REVIEW_PACS_TIMEOUT_S": "1"}
        )
    assert slow.returncode == 2 and "did not answer within 1 s" in slow.stderr


def test_an_orthanc_stopped_mid_session(tmp_path, app_env, shared_data):
    """Its own Orthanc, stopped after a query worked: the next call says the PACS cannot be reached."""
    if orthanc_server.binary() is None or orthanc_server.dicomweb_plugin() is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed")
    with orthanc_server.running(tmp_path / "orthanc") as server:
        cfg = pacs_svc.Config(server.dicomweb, orthanc_server.USER, orthanc_server.PASSWORD, 10, 10)
        server.store(shared_data / "dicom" / DX)
        (hit,) = pacs_svc.query(cfg)
        server.stop()
        with pytest.raises(pacs_svc.PacsError) as err:
            pacs_svc.query(cfg)
        assert err.value.code == "unreachable" and server.dicomweb in err.value.message
        dbe.upgrade(settings.load(app_env).db_url)
        got = pacs_svc.retrieve(_ctx(app_env), cfg, hit.study_instance_uid)
        assert got.error.code == "unreachable" and got.results == []


def test_usage_errors(pacs_env):
    assert cli(["pacs", "query", "--since", "2024-01-01"], pacs_env).returncode == 2
    assert cli(["pacs", "query", "--modality", "CT"], pacs_env).returncode == 2
    bad_uid = cli(["pacs", "retrieve", "not-a-uid"], pacs_env)
    assert bad_uid.returncode == 2 and "digits and dots" in bad_uid.stderr
    assert cli(["pacs", "store", "--study", "1.2.3", "--what", "png"], pacs_env).returncode == 2
    not_here = cli(["pacs", "store", "--study", "1.2.3"], pacs_env)
    assert not_here.returncode == 2 and "retrieve or import it first" in not_here.stderr
    unset = cli(["pacs", "query"], {**pacs_env, "CXR_REVIEW_PACS_URL": ""})
    assert unset.returncode == 2 and "CXR_REVIEW_PACS_URL" in unset.stderr


def test_final_annotations_go_to_the_pacs_instead_of_the_ai(pacs, app_env, shared_data):
    """With a final version on the image, `store` sends the reader's outlines and labels (no model runs)."""
    import numpy as np
    import requests
    from dicomweb_client.api import DICOMwebClient

    from services import annotations, auth
    from services.auth import SignedIn

    pacs.store(shared_data / "dicom" / DX)
    cfg = pacs_svc.Config(pacs.dicomweb, orthanc_server.USER, orthanc_server.PASSWORD, 30, 10)
    dbe.upgrade(settings.load(app_env).db_url)
    ctx = _ctx(app_env)
    (hit,) = pacs_svc.query(cfg)
    (got,) = pacs_svc.retrieve(ctx, cfg, hit.study_instance_uid).results
    auth.add_user(ctx.engine, "boss", "admin", "boss-password-long")
    with dbe.read(ctx.engine) as s:
        boss_id = s.scalar(text_sql("SELECT id FROM users WHERE username = 'boss'"))
    lm = np.zeros((1024, 1024), np.uint8)
    lm[200:700, 150:450], lm[500:800, 450:650] = 1, 2
    annotations.save(ctx, SignedIn(boss_id, "boss", "admin", False), got.image_id, status="final", label_map=lm,
                     labels={"Effusion": "present", "Mass": "absent"},
                     boxes=[{"label": "Effusion", "x": 100, "y": 600, "w": 200, "h": 150}])  # fmt: skip

    done = pacs_svc.store(ctx, cfg, hit.study_instance_uid, ("seg", "sr"), runner=None, via="test")
    assert done.source == "final" and done.models == []
    assert sorted((o["kind"], o["status"]) for o in done.objects) == [("seg", "stored"), ("sr", "stored")]
    session = requests.Session()
    session.auth = (orthanc_server.USER, orthanc_server.PASSWORD)
    dw = DICOMwebClient(pacs.dicomweb, session=session)
    by_kind = {o["kind"]: dw.retrieve_instance(hit.study_instance_uid, o["series_instance_uid"], o["sop_instance_uid"])
               for o in done.objects}  # fmt: skip
    seg = hd.seg.Segmentation.from_dataset(by_kind["seg"])
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["lungs", "heart"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[got.sop_instance_uid], combine_segments=False
    )[0]
    assert masks[..., 0].sum() == (lm == 1).sum() and masks[..., 1].sum() == (lm == 2).sum()
    flat = json.dumps(by_kind["sr"].to_json_dict())
    assert "boss^" in flat and "Effusion" in flat


def test_the_test_orthanc_takes_studies_only_from_its_registered_loopback_modality(pacs, shared_data):
    import subprocess

    intruder = subprocess.run(["storescu", "-aet", "INTRUDER", "-aec", orthanc_server.AET, "127.0.0.1",
                               str(pacs.dicom_port), str(shared_data / "dicom" / DX)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert intruder.returncode != 0 and "Calling AE Title Not Recognized" in intruder.stderr
    import requests

    assert requests.get(f"{pacs.dicomweb}/studies", timeout=10).status_code == 401  # no anonymous access


def test_no_credential_in_any_log_record(pacs, app_env, shared_data, caplog):
    """Everything logged at DEBUG (ours, dicomweb-client's, requests'/urllib3's) during a refused and an accepted
    query and a retrieve: no password (also not base64-encoded in a header), no user:password@ URL."""
    import logging

    pacs.store(shared_data / "dicom" / DX)
    caplog.set_level(logging.DEBUG)
    wrong = pacs_svc.Config(pacs.dicomweb, orthanc_server.USER, "Wr0ng-Pa55word-xyz", 30, 10)
    with pytest.raises(pacs_svc.PacsError):
        pacs_svc.query(wrong)
    cfg = pacs_svc.Config(pacs.dicomweb, orthanc_server.USER, orthanc_server.PASSWORD, 30, 10)
    (hit,) = pacs_svc.query(cfg)
    dbe.upgrade(settings.load(app_env).db_url)
    got = pacs_svc.retrieve(_ctx(app_env), cfg, hit.study_instance_uid, via="test")
    assert got.ok and caplog.records
    text = caplog.text
    assert (
        "Wr0ng-Pa55word-xyz" not in text and orthanc_server.PASSWORD not in text and "@127.0.0.1" not in text
    )
    basic = base64.b64encode(f"{orthanc_server.USER}:{orthanc_server.PASSWORD}".encode()).decode()
    assert basic not in text and "Authorization" not in text


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8042/dicom-web/", ("http://127.0.0.1:8042/dicom-web", None, None)),
        ("https://u%40x:p%3Aw%40rd@pacs.example:443/dw", ("https://pacs.example:443/dw", "u@x", "p:w@rd")),
        ("http://only-user@[::1]:8042/dicom-web", ("http://[::1]:8042/dicom-web", "only-user", None)),
    ],
)
def test_the_pacs_url_loses_its_userinfo_into_the_credentials(url, expected):
    s = settings.load({"CXR_REVIEW_SETTINGS": "", "CXR_REVIEW_PACS_URL": url})
    assert (s.pacs_url, s.pacs_user, s.pacs_password) == expected
    assert "p:w@rd" not in repr(s) and "u@x" not in repr(s)
    given = settings.load({"CXR_REVIEW_SETTINGS": "", "CXR_REVIEW_PACS_URL": url, "CXR_REVIEW_PACS_USER": "v",
                           "CXR_REVIEW_PACS_PASSWORD": "q"})  # fmt: skip
    assert (given.pacs_user, given.pacs_password) == ("v", "q")  # the variables win over the URL


@pytest.mark.parametrize(
    "env, says",
    [
        ({"CXR_REVIEW_PACS_URL": "ftp://u:Secret-9@host/x"}, "must be an http:// or https:// URL"),
        ({"CXR_REVIEW_PACS_URL": "http://u:Secret-9@host:port/x"}, "is not a valid URL"),
        ({"CXR_REVIEW_PACS_TIMEOUT_S": "0"}, "CXR_REVIEW_PACS_TIMEOUT_S must be between"),
        ({"CXR_REVIEW_PACS_MAX_INSTANCES": "many"}, "CXR_REVIEW_PACS_MAX_INSTANCES a whole number"),
    ],
)
def test_bad_pacs_settings_are_refused_without_echoing_the_url(env, says):
    with pytest.raises(settings.SettingsError) as err:
        settings.load({"CXR_REVIEW_SETTINGS": "", **env})
    assert says in str(err.value) and "Secret-9" not in str(err.value)
