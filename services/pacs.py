"""A PACS over DICOMweb (dicomweb-client): find studies (QIDO-RS), bring CR / DX instances into the store through the
import's own checks (WADO-RS, then services.importer), and send SEG / SR objects back (STOW-RS).

A study comes in whole or not at all: every instance is downloaded to a private temporary folder first, and only then
imported, so a PACS that stops answering half-way leaves nothing behind. Errors are one PacsError with a code and a
message that names the server by its URL without user name or password, and never carries a header value."""

from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
import pydicom.errors
import requests
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import select

from db import audit
from db import engine as dbe
from db.models import Study
from services import exports, importer
from services.context import Context
from services.settings import Settings

log = logging.getLogger(__name__)
MODALITIES = ("CR", "DX")
FORMATS = ("seg", "sr")
QUERY_LIMIT = 1000  # studies per query: a search that finds more should be narrowed
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^\d{8}$")
# Keep what a PACS stored: a JPEG radiograph is not decoded and re-encoded on the way.
_ANY_SYNTAX = (("application/dicom", "*"),)


class PacsError(Exception):
    """code: not_configured | bad_input | unreachable | timeout | unauthorized | not_found | too_many_instances |
    http_error | bad_answer | no_cr_dx | rejected_by_pacs | nothing_to_send. The message is safe to print and to show in the browser."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Config:
    url: str  # without userinfo
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    max_instances: int = 100


def config(settings: Settings) -> Config:
    if not settings.pacs_url:
        raise PacsError(
            "not_configured",
            "no PACS is configured: set CXR_REVIEW_PACS_URL (the DICOMweb root, e.g. .../dicom-web)",
        )
    return Config(settings.pacs_url, settings.pacs_user, settings.pacs_password, settings.pacs_timeout_s,
                  settings.pacs_max_instances)  # fmt: skip


def _client(cfg: Config) -> DICOMwebClient:
    session = requests.Session()
    if cfg.user or cfg.password:
        session.auth = (cfg.user or "", cfg.password or "")
    client = DICOMwebClient(cfg.url, session=session, timeout=cfg.timeout_s)
    client.set_http_retry_params(
        retry=False
    )  # a busy PACS gets one clear error, not minutes of silent retries
    return client


@contextmanager
def _talking(cfg: Config, what: str) -> Iterator[None]:
    """requests' and the client's errors as one PacsError. Their own text is never passed on: it can hold the
    request's URL with UIDs in it."""
    try:
        yield
    except requests.exceptions.Timeout as exc:
        log.info("PACS %s: %s", what, type(exc).__name__)
        raise PacsError(
            "timeout", f"the PACS at {cfg.url} did not answer within {cfg.timeout_s:g} s ({what}; "
            "CXR_REVIEW_PACS_TIMEOUT_S sets the limit)"
        ) from None  # fmt: skip
    except requests.exceptions.ConnectionError as exc:
        log.info("PACS %s: %s", what, type(exc).__name__)
        raise PacsError("unreachable", f"cannot reach the PACS at {cfg.url} ({what}): is it running, and is "
                                       "CXR_REVIEW_PACS_URL right?") from None  # fmt: skip
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        log.info("PACS %s: HTTP %s", what, status)
        if status in (401, 403):
            raise PacsError("unauthorized", f"the PACS at {cfg.url} refused the user name or password (HTTP {status}; "
                                            "check CXR_REVIEW_PACS_USER and CXR_REVIEW_PACS_PASSWORD)") from None  # fmt: skip
        if status == 404:
            raise PacsError("not_found", f"the PACS at {cfg.url} has no such resource ({what}, HTTP 404): is "
                                         "CXR_REVIEW_PACS_URL its DICOMweb root?") from None  # fmt: skip
        raise PacsError("http_error", f"the PACS at {cfg.url} answered HTTP {status} ({what})") from None
    except requests.exceptions.RequestException as exc:
        log.info("PACS %s: %s", what, type(exc).__name__)
        raise PacsError("unreachable", f"the request to the PACS at {cfg.url} failed ({what}: "
                                       f"{type(exc).__name__})") from None  # fmt: skip
    except (ValueError, KeyError, pydicom.errors.InvalidDicomError) as exc:
        log.info("PACS %s: unreadable answer (%s)", what, type(exc).__name__)
        raise PacsError(
            "bad_answer", f"the PACS at {cfg.url} sent an answer that cannot be read ({what})"
        ) from None


def _value(item: dict, keyword: str, default=None):
    """A DICOM JSON attribute's value(s): one value, or the list for multi-valued ones."""
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = item.get(tag, {}).get("Value")
    if not values:
        return default
    return values if len(values) > 1 or keyword == "ModalitiesInStudy" else values[0]


def check_uid(uid: str) -> str:
    if not (uid and len(uid) <= 64 and _UID.match(uid)):
        raise PacsError("bad_input", "a Study Instance UID is digits and dots, at most 64 characters")
    return uid


# --- query ---------------------------------------------------------------------------------------------------------
@dataclass
class StudyHit:
    study_instance_uid: str
    study_date: str | None
    modalities: list[str]
    n_instances: int | None
    patient_id: str | None
    accession_number: str | None
    study_description: str | None

    def to_json(self) -> dict:
        return asdict(self)


def query(cfg: Config, *, patient_id: str | None = None, modality: str | None = None,
          since: str | None = None) -> list[StudyHit]:  # fmt: skip
    """Studies with a CR or DX series (only `modality` when given), of a patient, from a day on (YYYYMMDD)."""
    if modality is not None and modality not in MODALITIES:
        raise PacsError("bad_input", f"the modality must be one of {', '.join(MODALITIES)}")
    if since is not None and not _DATE.match(since):
        raise PacsError("bad_input", "the date must be YYYYMMDD")
    filters = {"ModalitiesInStudy": modality} if modality else {}
    if patient_id:
        filters["PatientID"] = patient_id
    if since:
        filters["StudyDate"] = f"{since}-"
    fields = ["StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "PatientID", "AccessionNumber",
              "StudyDescription"]  # fmt: skip
    with _talking(cfg, "study search"):
        found = _client(cfg).search_for_studies(search_filters=filters, fields=fields, limit=QUERY_LIMIT)
        hits = [
            StudyHit(
                study_instance_uid=_value(item, "StudyInstanceUID"), study_date=_value(item, "StudyDate"),
                modalities=list(_value(item, "ModalitiesInStudy", [])),
                n_instances=_value(item, "NumberOfStudyRelatedInstances"), patient_id=_value(item, "PatientID"),
                accession_number=_value(item, "AccessionNumber"), study_description=_value(item, "StudyDescription"),
            )
            for item in found
        ]  # fmt: skip
    # A server may ignore the modality filter, or match studies without the field: keep only what can be imported.
    return sorted(
        (h for h in hits if h.study_instance_uid and set(h.modalities) & set([modality] if modality else MODALITIES)),
        key=lambda h: (h.study_date or "", h.study_instance_uid), reverse=True,
    )  # fmt: skip


# --- retrieve ------------------------------------------------------------------------------------------------------
@dataclass
class SkippedSeries:
    series_instance_uid: str
    modality: str | None
    n_instances: int | None
    reason: str

    def to_json(self) -> dict:
        return {"status": "skipped", **asdict(self)}


@dataclass
class Retrieval:
    """One study's retrieval: the import's result per instance, the series left out, or the error that stopped it
    (then nothing of the study was imported)."""

    study_instance_uid: str
    results: list[importer.ImportResult] = field(default_factory=list)
    skipped: list[SkippedSeries] = field(default_factory=list)
    error: PacsError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not any(r.status == "rejected" for r in self.results)

    def lines(self) -> list[dict]:
        """JSON lines: one per instance (as `cxr-review import`), one per series left out, one for an error."""
        out = [{**r.to_json(), "study_instance_uid": r.study_instance_uid or self.study_instance_uid}
               for r in self.results]  # fmt: skip
        out += [{"study_instance_uid": self.study_instance_uid, **s.to_json()} for s in self.skipped]
        if self.error:
            out.append({"study_instance_uid": self.study_instance_uid, "status": "failed", "code": self.error.code,
                        "reason": self.error.message})  # fmt: skip
        return out


def retrieve(ctx: Context, cfg: Config, study_uid: str, *, user_id: int | None = None, client: str | None = None,
             via: str = "browser") -> Retrieval:  # fmt: skip
    """Bring a study's CR / DX instances in through the import's checks; series of other modalities are listed as
    skipped. Audited (pacs_retrieve, and the import's own rows per image and per batch)."""
    return next(retrieve_many(ctx, cfg, [study_uid], user_id=user_id, client=client, via=via))


def retrieve_many(ctx: Context, cfg: Config, study_uids: list[str], *, user_id: int | None = None,
                  client: str | None = None, via: str = "browser") -> Iterator[Retrieval]:  # fmt: skip
    """retrieve() of each study in turn, yielded as it is done. The next study downloads (a worker thread: HTTP and
    its own temporary folder, never the database) while this one is imported; at most one study waits on disk."""
    uids = list(study_uids)
    with tempfile.TemporaryDirectory(prefix="cxr-pacs-") as tmp, ThreadPoolExecutor(1, "pacs-download") as pool:

        def fetch(i: int) -> tuple[Retrieval, list[tuple[Path, str]], Path]:
            out, folder = Retrieval(uids[i]), Path(tmp) / str(i)
            folder.mkdir()
            try:
                return out, _download(cfg, check_uid(uids[i]), folder, out), folder
            except PacsError as exc:
                out.error = exc
                return out, [], folder

        ahead = pool.submit(fetch, 0) if uids else None
        for i in range(len(uids)):
            out, files, folder = ahead.result()
            ahead = pool.submit(fetch, i + 1) if i + 1 < len(uids) else None
            for path, name in files:
                out.results.append(importer.import_file(ctx.engine, ctx.store, path, max_bytes=ctx.settings.max_upload_bytes,
                                                        display_name=name, user_id=user_id))  # fmt: skip
            shutil.rmtree(folder)
            importer.record_batch(ctx.engine, out.results, actor_id=user_id, client=client, via=f"PACS ({via})")
            counts = {k: sum(r.status == k for r in out.results) for k in ("imported", "duplicate", "rejected")}
            _audit(ctx, "pacs_retrieve", user_id, client, {r.study_id for r in out.results if r.study_id}, {
                "via": via, **counts, "series_skipped": len(out.skipped), "error": out.error.code if out.error else None,
            })  # fmt: skip
            yield out


def _download(cfg: Config, study_uid: str, tmp: Path, out: Retrieval) -> list[tuple[Path, str]]:
    """Every CR / DX instance of the study written to `tmp` (the series of other modalities go to out.skipped), or a
    PacsError before anything is imported."""
    dw = _client(cfg)
    with _talking(cfg, "series search"):
        series = dw.search_for_series(study_uid, fields=["Modality", "NumberOfSeriesRelatedInstances"])
    if not series:
        raise PacsError("not_found", f"the PACS at {cfg.url} has no study with this Study Instance UID")
    wanted = []
    for item in series:
        uid, modality = _value(item, "SeriesInstanceUID"), _value(item, "Modality")
        n = _value(item, "NumberOfSeriesRelatedInstances")
        if modality in MODALITIES:
            wanted.append((uid, n))
        else:
            out.skipped.append(SkippedSeries(uid, modality, n, f"series of modality {modality or 'unknown'}, not CR "
                                             "or DX: not retrieved"))  # fmt: skip
    if not wanted:
        raise PacsError("no_cr_dx", "the study has no CR or DX series: nothing to retrieve")
    total = sum(n or 0 for _, n in wanted)
    if total > cfg.max_instances:
        raise PacsError("too_many_instances", f"the study's CR/DX series hold {total} instances, over the limit of "
                        f"{cfg.max_instances} per study (CXR_REVIEW_PACS_MAX_INSTANCES): nothing retrieved")  # fmt: skip
    files, done = [], 0
    for series_uid, _ in wanted:
        with _talking(cfg, "instance download"):
            datasets = dw.retrieve_series(study_uid, series_uid, media_types=_ANY_SYNTAX)
        for ds in datasets:
            done += 1
            if done > cfg.max_instances:  # the series grew since it was counted
                raise PacsError("too_many_instances", f"the study holds more than {cfg.max_instances} CR/DX instances "
                                "(CXR_REVIEW_PACS_MAX_INSTANCES): nothing retrieved")  # fmt: skip
            sop = str(ds.get("SOPInstanceUID", "")) or f"instance-{done}"
            path = tmp / f"{done:05d}.dcm"
            buf = io.BytesIO()
            with _talking(cfg, "instance download"):
                pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            path.write_bytes(buf.getvalue())
            files.append((path, f"pacs/{sop}.dcm"))
    return files


# --- store ---------------------------------------------------------------------------------------------------------
@dataclass
class Stored:
    """One study sent: the objects the PACS took, and per image what was not sent and why."""

    study_instance_uid: str
    source: str  # final | ai
    objects: list[dict] = field(
        default_factory=list
    )  # {kind, image_id, sop_instance_uid, series_instance_uid, status}
    skipped: list[dict] = field(default_factory=list)  # {image_id, kind, reason}
    models: list[str] = field(default_factory=list)  # "id version" of the models whose reading was sent (AI)

    def lines(self) -> list[dict]:
        base = {"study_instance_uid": self.study_instance_uid, "source": self.source}
        return [{**base, **o} for o in self.objects] + [
            {**base, "status": "skipped", **s} for s in self.skipped
        ]


def store(ctx: Context, cfg: Config, study_uid: str, what: tuple[str, ...], runner, *, user_id: int | None = None,
          client: str | None = None, via: str = "browser") -> Stored:  # fmt: skip
    """Send a stored study's final annotations, or where it has none the AI's reading (analysed now if it was not),
    to the PACS as DICOM SEG and / or SR, in one STOW-RS request. PacsError when nothing could be sent."""
    check_uid(study_uid)
    if not what or set(what) - set(FORMATS):
        raise PacsError("bad_input", f"what to send: one or more of {', '.join(FORMATS)}")
    try:
        items = exports.gather(ctx, "final", None, [study_uid])
        source = "final"
        if not items:
            items, source = exports.gather(ctx, "ai", None, [study_uid], runner), "ai"
    except exports.ExportError as exc:
        raise PacsError("not_found", f"{exc} in this app: retrieve or import it first") from None
    out = Stored(study_uid, source)
    datasets, meta = [], []
    out.models = sorted({f"{m['id']} {m['version']}" for i in items for r in i.readings for m in r.models.values()})
    for item in items:
        if item.skipped:
            out.skipped.append({"image_id": item.image["id"], "kind": None, "reason": item.skipped})
            continue
        seen_sc = False
        for fmt in what:
            objects, reason = exports.dicom_datasets(ctx, fmt, item)
            if reason:
                out.skipped.append({"image_id": item.image["id"], "kind": fmt, "reason": reason})
            for kind, _, ds in objects:
                if kind == "sc" and seen_sc:
                    continue  # the same Secondary Capture for SEG and SR
                seen_sc |= kind == "sc"
                datasets.append(ds)
                meta.append({"kind": kind, "image_id": item.image["id"], "sop_instance_uid": str(ds.SOPInstanceUID),
                             "series_instance_uid": str(ds.SeriesInstanceUID)})  # fmt: skip
    error = None
    if datasets:
        try:
            with _talking(cfg, "store"):
                answer = _client(cfg).store_instances(datasets, study_instance_uid=study_uid)
            failed = {str(f.ReferencedSOPInstanceUID) for f in answer.get("FailedSOPSequence", [])}
        except PacsError as exc:
            error, failed = exc, {m["sop_instance_uid"] for m in meta}
        out.objects = [
            {**m, "status": "failed" if m["sop_instance_uid"] in failed else "stored"} for m in meta
        ]
        if failed and error is None:
            error = PacsError(
                "rejected_by_pacs", f"the PACS at {cfg.url} refused {len(failed)} of {len(meta)} objects"
            )
    study_ids = {_study_id(ctx, study_uid)} - {None}
    _audit(ctx, "pacs_store", user_id, client, study_ids, {
        "via": via, "source": source, "formats": list(what), "stored": sum(o["status"] == "stored" for o in out.objects),
        "failed": sum(o["status"] == "failed" for o in out.objects), "skipped": len(out.skipped),
        "error": error.code if error else None,
    })  # fmt: skip
    if error:
        raise error
    if not datasets:
        raise PacsError("nothing_to_send", "nothing to send: " + "; ".join(sorted({s["reason"] for s in out.skipped}))
                        if out.skipped else "nothing to send: the study has no images")  # fmt: skip
    return out


def _study_id(ctx: Context, study_uid: str) -> int | None:
    with dbe.read(ctx.engine) as s:
        return s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))


def _audit(ctx: Context, action: str, user_id, client, study_ids: set[int], details: dict) -> None:
    """No UIDs in the audit (they can identify a patient): the app's study ids, and counts."""
    target = f"study {', '.join(map(str, sorted(study_ids)))}" if study_ids else None
    try:
        dbe.write(ctx.engine, lambda s: audit.add(s, action, actor_id=user_id, target=target, details=details,
                                                   client_address=client))  # fmt: skip
    except dbe.DatabaseBusy:
        log.warning("the %s audit row could not be written: the database is busy", action)
