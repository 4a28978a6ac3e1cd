"""A real Orthanc for the PACS tests and bench/bench_pacs.py: Debian's `Orthanc` with its DICOMweb plugin, on
loopback (HTTP; DICOM only from the registered loopback modality), on free ports, with its own JSON configuration and storage in a folder of the caller's, a registered
user, started and stopped by the caller (the package's own system service is never used)."""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.servers import free_ports, wait_until_answers

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER, PASSWORD = "cxr-pacs", "s3cret-Orthanc-pw"
AET = "CXRTESTPACS"
CALLING_AET = "CXRTEST"  # storescu's


def binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).exists()), None)


def dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        for p in sorted(d.glob("libOrthancDicomWeb.so*")):
            return p
    return None


@dataclass
class Orthanc:
    root: str  # http://127.0.0.1:PORT
    dicom_port: int
    proc: subprocess.Popen
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def store(self, *files: Path) -> None:
        """Send files with dcmtk's storescu (C-STORE to the DICOM port), as a modality would; -xy also proposes JPEG
        baseline, which the SIIM file is in."""
        subprocess.run(["storescu", "-xy", "-aet", CALLING_AET, "-aec", AET, "127.0.0.1", str(self.dicom_port), *map(str, files)],
                       check=True, capture_output=True, timeout=120)  # fmt: skip

    def clear(self) -> None:
        """Delete every study (Orthanc's REST API), so that each test starts from an empty PACS."""
        auth = (USER, PASSWORD)
        for study in requests.get(f"{self.root}/studies", auth=auth, timeout=30).json():
            requests.delete(f"{self.root}/studies/{study}", auth=auth, timeout=30).raise_for_status()


@contextmanager
def running(folder: Path, *, timeout_s: float = 60) -> Orthanc:
    """Orthanc started with a configuration written to `folder` (storage there too), answering on loopback."""
    exe, plugin = binary(), dicomweb_plugin()
    assert exe and plugin, "Orthanc or its DICOMweb plugin is missing"
    folder.mkdir(parents=True, exist_ok=True)
    for attempt in range(
        3
    ):  # another process may take a picked port before Orthanc binds it: Orthanc then exits
        try:
            server = _start(exe, plugin, folder, timeout_s)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


def _start(exe: str, plugin: Path, folder: Path, timeout_s: float) -> Orthanc:
    http_port, dicom_port = free_ports(2)
    conf = {
        "Name": "CXR Review test PACS", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"), "Plugins": [str(plugin)],
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD}, "HttpDescribeErrors": False, "WebDavEnabled": False,
        "OrthancExplorerEnabled": False, "DicomServerEnabled": True, "DicomAet": AET, "DicomPort": dicom_port,
        # Orthanc 1.10 has no listen address for its DICOM port (HTTP is loopback-only through RemoteAccessAllowed):
        # it accepts associations only from the one registered modality, by AE title and by host 127.0.0.1.
        "DicomCheckCalledAet": True, "DicomCheckModalityHost": True, "DicomModalities": {"cxrtest": [CALLING_AET, "127.0.0.1", 104]},
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False, "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False,
        "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 8, "StorageCompression": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }  # fmt: skip
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(conf, indent=1))
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, proc, log)

    def dicomweb_up() -> bool:  # the HTTP server and the plugin both
        return requests.get(f"{server.dicomweb}/studies", auth=(USER, PASSWORD), timeout=2).status_code == 200

    try:
        wait_until_answers(proc, dicomweb_up, timeout_s, f"Orthanc (log: {log})")
    except BaseException:
        server.stop()
        raise
    return server
