"""The layer rules of DESIGN.md, checked on the source: app -> screens -> services -> {viewer, inference, db,
reports}."""
import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LEAVES = {"viewer", "inference", "db", "reports"}
FORBIDDEN = {
    "viewer": {"streamlit", "screens", "services", "db", "inference", "reports", "torch", "sqlalchemy"},
    "inference": {"streamlit", "screens", "services", "db", "viewer", "reports", "sqlalchemy"},
    "db": {"streamlit", "screens", "services", "viewer", "inference", "reports", "torch"},
    # report text in, labels out: pure Python
    "reports": {"streamlit", "screens", "services", "db", "viewer", "inference", "torch", "sqlalchemy"},
    "services": {"streamlit", "screens"},
}
# `cxr-review serve` starts the Streamlit server; that is the only Streamlit use outside screens.
ALLOWED = {("viewer", "inference.types"), ("services", "streamlit.web")}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import_arrows(package):
    bad = []
    for path in (REPO / package).rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package] and (package, name) not in ALLOWED:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert bad == []


def test_inference_types_does_not_import_torch():
    path = REPO / "inference" / "types.py"
    if not path.exists():
        pytest.skip("inference/types.py not written yet")
    assert "torch" not in {n.split(".")[0] for n in _imports(path)}


def test_only_dicom_io_calls_dcmread():
    callers = [
        str(p.relative_to(REPO))
        for pkg in ("viewer", "inference", "db", "services", "screens")
        for p in (REPO / pkg).rglob("*.py")
        if "dcmread" in p.read_text()
    ]
    assert set(callers) <= {"viewer/dicom_io.py"}


@pytest.mark.parametrize("package", ["viewer", "inference", "db", "screens", "services", "reports"])
def test_packages_resolve_to_this_repository(package):
    # PyPI has packages with these names: they must never shadow ours.
    spec = importlib.util.find_spec(package)
    assert spec is not None and Path(spec.origin).resolve().is_relative_to(REPO)


def test_no_pages_folder_beside_the_app():
    # Streamlit runs a requested file of a `pages/` folder next to the main script directly (no sign-in gate)
    # until the first run calls st.navigation: the screens live in `screens/` for that reason.
    assert not (REPO / "pages").exists()
