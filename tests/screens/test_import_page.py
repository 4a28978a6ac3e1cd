"""The import page through Streamlit's AppTest: real files uploaded through the uploader, real imports."""

from pathlib import Path

import pytest
from streamlit import config

from services import auth, importer
from tests.conftest import sign_in_through_the_form

NIH_DX = "dicom/nih_dx_chest_1024_nofinding_nccid.dcm"
NIH_PNG = "nih/images/00000075_000.png"
BROKEN = ("broken.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI", "application/dicom")
NOTES = ("notes.txt", b"not an image at all", "text/plain")


@pytest.fixture
def env(app_ctx):
    auth.add_user(app_ctx.engine, "rad", "radiologist", "radiologist-pw")
    return app_ctx


@pytest.fixture
def streamlit_cap():
    """Streamlit's own cap on a browser upload, as .streamlit/config.toml sets it (restored afterwards)."""
    before = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1024)
    yield 1024
    config.set_option("server.maxUploadSize", before)


def _import_page():
    at = sign_in_through_the_form("rad", "radiologist-pw")
    return at.switch_page("screens/import_studies.py").run()


def _upload(at, *files):
    at.file_uploader[0].set_value(list(files)).run()
    at.button(key="do_import").click().run()
    assert not at.exception
    return at


def _file(shared_data, name):
    return (Path(name).name, (shared_data / name).read_bytes(), "application/octet-stream")


@pytest.mark.parametrize("setting_mb, shown_mb", [("200", 200), ("2000", 1024)])
def test_the_page_and_the_uploader_state_the_same_upload_limit(env, monkeypatch, streamlit_cap, setting_mb, shown_mb):
    # The caption said the import's setting (200 MB by default) while the uploader said Streamlit's cap (1 GB);
    # a browser can send the smaller of the two.
    monkeypatch.setenv("CXR_REVIEW_MAX_UPLOAD_MB", setting_mb)
    at = _import_page()
    assert at.title[0].value == "Import studies" and not at.exception
    assert f"at most {shown_mb} MB per file" in at.caption[0].value
    assert at.file_uploader[0].proto.max_upload_size_mb == shown_mb


@pytest.mark.parametrize(
    "stored_before, uploads, banner",
    [
        ([], [BROKEN, NOTES], "Both files were rejected: nothing was imported. Reasons below."),
        ([], [BROKEN, NIH_DX], "1 of 2 files was rejected; the other one was imported. Reason below."),
        (
            [NIH_DX],
            [NIH_DX, BROKEN],
            "1 of 2 files was rejected; the other one was already stored: nothing new was imported. Reason below.",
        ),
        (
            [NIH_DX],
            [NIH_DX, NIH_PNG, BROKEN],
            "1 of 3 files was rejected; of the other 2, 1 was imported and 1 was already stored. Reason below.",
        ),
    ],
    ids=["all_rejected", "imported_and_rejected", "duplicate_and_rejected", "all_three"],
)
def test_the_banner_says_what_happened_to_the_files(env, shared_data, stored_before, uploads, banner):
    # It said "the others were imported" whenever a file was rejected, also when none was.
    if stored_before:
        list(importer.import_paths(env.engine, env.store, [shared_data / p for p in stored_before], max_bytes=2**30))
    at = _upload(_import_page(), *(u if isinstance(u, tuple) else _file(shared_data, u) for u in uploads))
    assert [e.value for e in at.error] == [banner]


def test_duplicates_alone_are_not_called_imported(env, shared_data):
    list(importer.import_paths(env.engine, env.store, [shared_data / NIH_DX], max_bytes=2**30))
    at = _upload(_import_page(), _file(shared_data, NIH_DX))
    assert not at.error and [i.value for i in at.info] == ["The file was already stored: nothing new was imported."]


def test_the_result_table_shows_empty_cells_not_none(env, shared_data):
    # A rejected file has no study or image, a PNG no SOP Instance UID, an import no reason: those cells read "None".
    at = _upload(_import_page(), BROKEN, _file(shared_data, NIH_PNG))
    table = at.dataframe[0].value
    assert list(table["File"]) == ["broken.dcm", "00000075_000.png"]
    assert not table.isna().any().any() and "None" not in table.to_string()
    rejected, png = table.iloc[0], table.iloc[1]
    assert (rejected["Study"], rejected["Image (SOP Instance UID)"]) == ("", "") and rejected["Reason"]
    assert (png["Reason"], png["Image (SOP Instance UID)"]) == ("", "") and png["Study"].startswith("2.25.")
