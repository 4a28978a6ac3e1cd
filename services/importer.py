"""Import DICOM / PNG / JPEG files: validate, de-duplicate, store content-addressed, record in the database.
One bad file never stops the batch, and nothing already stored is touched."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from db import audit, repo
from db import engine as dbe
from services.store import ImageStore
from viewer import dicom_io

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    file: str
    status: str  # "imported" | "duplicate" | "rejected"
    reason: str | None = None  # set only when rejected
    code: str | None = None  # machine-readable reason code
    study_id: int | None = None
    image_id: int | None = None
    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _rejected(name: str, code: str, reason: str) -> ImportResult:
    return ImportResult(file=name, status="rejected", code=code, reason=reason)


def _uid_hash(uid: str | None) -> str:
    """For logs: a UID is linkable to a patient, its hash is not."""
    return hashlib.sha256((uid or "").encode()).hexdigest()[:12]


def iter_input_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, and every non-hidden file under given folders (recursive, sorted). Missing paths are
    yielded too so that the caller reports them."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            yield p


class FileRejected(Exception):
    """A file the import checks refuse: `code` as in ImportResult.code, a PHI-free `reason`."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check_size(size: int, max_bytes: int) -> None:
    """FileRejected("too_large") for a file over the cap, before anything reads it."""
    if size > max_bytes:
        raise FileRejected(
            "too_large",
            f"file is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB import limit (CXR_REVIEW_MAX_UPLOAD_MB)",
        )


def load_checked(path: Path, *, max_bytes: int) -> dicom_io.DecodedImage:
    """The file decoded after the checks every import makes (exists, size cap, then dicom_io's header checks
    and decoding); FileRejected otherwise. `cxr-review infer` reads its inputs through this too."""
    if not path.is_file():
        raise FileRejected("not_found", "no such file")
    check_size(path.stat().st_size, max_bytes)
    try:
        return dicom_io.load(path)  # header checks first, then decoding: a broken file fails here
    except dicom_io.ImageRejected as exc:
        log.info("rejected %s: %s", exc.code, exc.message)
        raise FileRejected(exc.code, exc.message) from exc


def import_file(
    engine: Engine,
    store: ImageStore,
    path: Path,
    *,
    max_bytes: int,
    display_name: str | None = None,
    user_id: int | None = None,
    metadata: dict[str, dict] | None = None,
) -> ImportResult:
    """metadata: {file name: header fields} for PNG/JPEG files (see services.sidecar); DICOM ignores it."""
    name = display_name or str(path)
    try:
        img = load_checked(path, max_bytes=max_bytes)
    except FileRejected as exc:
        return _rejected(name, exc.code, exc.reason)
    size = path.stat().st_size
    header, pixel_sha = img.header, dicom_io.pixel_sha256(img)
    if header.source_format != "dicom" and metadata and Path(name).name in metadata:
        header = dataclasses.replace(header, **metadata[Path(name).name])
    with dbe.read(engine) as s:
        known = _known(s, name, header, pixel_sha)
        if known is not None:
            return known

    file_sha = store.put_bytes(path.read_bytes())
    # PNG/JPEG carry no UIDs: derive a stable one from the pixels (2.25 = UUID-derived root).
    study_uid = header.study_instance_uid or f"2.25.{int(pixel_sha[:30], 16)}"
    spacing = header.pixel_spacing_mm or (None, None)

    def tx(s):
        known = _known(s, name, header, pixel_sha)
        if known is not None:  # imported by someone else since the check above
            return known
        study = repo.get_or_create_study(
            s,
            study_uid,
            patient_id=header.patient_id,
            issuer_of_patient_id=header.issuer_of_patient_id,
            patient_name=header.patient_name,
            patient_age_years=header.patient_age_years,
            patient_sex=header.patient_sex,
            study_date=header.study_date,
            study_description=header.study_description,
            accession_number=header.accession_number,
            modality=header.modality,
        )
        image = repo.add_image(
            s,
            study,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            source_format=header.source_format,
            file_sha256=file_sha,
            pixel_sha256=pixel_sha,
            file_size=size,
            original_filename=Path(name).name[:255],
            rows=header.rows,
            columns=header.columns,
            bits_stored=header.bits_stored,
            photometric_interpretation=header.photometric_interpretation,
            transfer_syntax_uid=header.transfer_syntax_uid,
            modality=header.modality,
            body_part_examined=header.body_part_examined,
            view_position=header.view_position,
            pixel_spacing_row_mm=spacing[0],
            pixel_spacing_col_mm=spacing[1],
            pixel_spacing_source=header.pixel_spacing_source,
            window_center=header.window_center,
            window_width=header.window_width,
            warnings="\n".join(header.warnings),
            imported_by_id=user_id,
        )
        # In the same transaction as the image: no stored image without its audit row.
        audit.add(s, "import", actor_id=user_id, target=f"image {image.id}",
                  details={"study_id": study.id, "image_id": image.id, "source_format": header.source_format,
                           "warnings": len(header.warnings)})  # fmt: skip
        return ImportResult(
            file=name,
            status="imported",
            study_id=study.id,
            image_id=image.id,
            study_instance_uid=study_uid,
            sop_instance_uid=header.sop_instance_uid,
            warnings=list(header.warnings),
        )

    try:
        result = dbe.write(engine, tx)
    except IntegrityError:
        # A concurrent import of the same SOP Instance UID won the race.
        with dbe.read(engine) as s:
            known = _known(s, name, header, pixel_sha)
        if known is None:
            raise
        return known
    except dbe.DatabaseBusy as exc:
        return _rejected(name, "database_busy", str(exc))
    log.info(
        "%s image study=%s sop=%s", result.status, _uid_hash(study_uid), _uid_hash(header.sop_instance_uid)
    )
    return result


def import_upload(
    engine: Engine, store: ImageStore, path: Path, name: str, data: bytes | memoryview, *, max_bytes: int,
    user_id: int | None,
) -> ImportResult:
    """A browser upload: refused over the size cap before it is written anywhere, else written to `path` (a
    private temporary folder's), imported as `name`, and removed."""
    try:
        check_size(len(data), max_bytes)
    except FileRejected as exc:
        return _rejected(name, exc.code, exc.reason)
    path.write_bytes(data)
    try:
        return import_file(engine, store, path, max_bytes=max_bytes, display_name=name, user_id=user_id)
    finally:
        path.unlink(missing_ok=True)


def _known(s, name: str, header: dicom_io.ImageHeader, pixel_sha: str) -> ImportResult | None:
    """A duplicate of a stored image, a rejection when the file reuses a stored UID for other content, or None."""
    if header.sop_instance_uid:
        existing = repo.image_by_sop(s, header.sop_instance_uid)
        if existing is None:
            return None
        if (existing.pixel_sha256, existing.photometric_interpretation) == (
            pixel_sha,
            header.photometric_interpretation,
        ):
            return _duplicate(name, existing)
        # A DICOM instance never changes under its UID; two contents under one UID is an error at the source.
        return _rejected(
            name,
            "uid_conflict",
            "an image with the same SOP Instance UID but different pixels or photometric interpretation is "
            "already stored; not imported (a changed image needs a new SOP Instance UID)",
        )
    existing = repo.image_by_pixel_hash(s, pixel_sha)
    return _duplicate(name, existing) if existing is not None else None


def _duplicate(name: str, existing) -> ImportResult:
    return ImportResult(
        file=name,
        status="duplicate",
        study_id=existing.study_id,
        image_id=existing.id,
        study_instance_uid=existing.study.study_instance_uid,
        sop_instance_uid=existing.sop_instance_uid,
    )


def record_batch(
    engine: Engine, results: list[ImportResult], *, actor_id: int | None, client: str | None = None,
    via: str = "browser",
) -> None:
    """One audit row per import batch besides each stored image's own: counts by status and by rejection code
    (no file names or UIDs: they can identify a patient)."""
    if not results:
        return
    counts = Counter(r.status for r in results)
    codes = Counter(r.code for r in results if r.status == "rejected")
    details = {
        "via": via, "files": len(results), **{k: counts.get(k, 0) for k in ("imported", "duplicate", "rejected")},
        "rejection_codes": dict(codes),
    }  # fmt: skip
    try:
        dbe.write(engine, lambda s: audit.add(s, "import_batch", actor_id=actor_id, details=details, client_address=client))
    except dbe.DatabaseBusy:
        log.warning("the import's audit row could not be written: the database is busy")


def batch_summary(statuses: Iterable[str]) -> str:
    """One sentence on a batch's outcome that is true for every mix of imported, duplicate (already stored) and
    rejected files: "the others were imported" only where they were."""
    counts = Counter(statuses)
    n, imported, stored, rejected = sum(counts.values()), counts["imported"], counts["duplicate"], counts["rejected"]

    def was(k: int) -> str:
        return "was" if k == 1 else "were"

    def others(k: int) -> str:
        return "the other one was" if k == 1 else f"the other {k} were"

    if max(imported, stored, rejected) == n:
        every = "The file was" if n == 1 else "Both files were" if n == 2 else f"All {n} files were"
        if rejected:
            return f"{every} rejected: nothing was imported."
        return f"{every} already stored: nothing new was imported." if stored else f"{every} imported."
    if not rejected:
        return f"{imported} of {n} files {was(imported)} imported; {others(stored)} already stored."
    head = f"{rejected} of {n} files {was(rejected)} rejected"
    if not stored:
        return f"{head}; {others(imported)} imported."
    if not imported:
        return f"{head}; {others(stored)} already stored: nothing new was imported."
    return f"{head}; of the other {n - rejected}, {imported} {was(imported)} imported and {stored} {was(stored)} already stored."


def import_paths(
    engine: Engine,
    store: ImageStore,
    paths: Iterable[str | Path],
    *,
    max_bytes: int,
    user_id: int | None = None,
    metadata: dict[str, dict] | None = None,
) -> Iterator[ImportResult]:
    for path in iter_input_files(paths):
        yield import_file(engine, store, path, max_bytes=max_bytes, user_id=user_id, metadata=metadata)
