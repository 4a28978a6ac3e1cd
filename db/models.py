"""SQLAlchemy 2.0 typed ORM. Column names follow DICOM keywords (snake_case)."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime: store timezone-aware UTC only")
            value = value.astimezone(dt.UTC)
        return value

    def process_result_value(self, value, dialect):
        # SQLite gives back the naive UTC it stored; PostgreSQL gives timestamptz in the session's TimeZone.
        if value is not None:
            value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Role(str, enum.Enum):
    radiologist = "radiologist"
    annotator = "annotator"
    researcher = "researcher"
    admin = "admin"


class StudyStatus(str, enum.Enum):
    new = "new"
    in_review = "in_review"
    reviewed = "reviewed"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))
    is_active: Mapped[bool] = mapped_column(default=True)
    # A password someone else chose or the system generated (shown once): changed at the next sign-in.
    must_change_password: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SignInSession(Base):
    """A browser's signed-in session, so that a reload does not sign the reader out. Only the sha256 of the
    random token is stored (the browser holds the token in a cookie); ended_at is set on sign-out."""

    __tablename__ = "sign_in_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Idle timeout: the session ends when nothing happened for a while (updated at most once a minute).
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The address that signed in; a cookie replayed from another address does not resume the session.
    client_address: Mapped[str | None] = mapped_column(String(64))


class UserPreference(Base):
    """A reader's setting that outlives a session (e.g. the viewer's AI switch), one row per user and key."""

    __tablename__ = "user_preferences"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SignInThrottle(Base):
    """Sign-in attempts per typed user name (existing or not, so a lockout tells nothing about which names
    exist), kept under the sha256 of the name, never its text (a mistyped password lands in the name field):
    the attempts since `window_start` that did not succeed, and the lockout they caused. Deleted by a
    successful sign-in, an admin's unlock, or once its window has passed."""

    __tablename__ = "sign_in_throttle"

    name_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """Append-only security and administration audit (database triggers refuse UPDATE and DELETE): sign-ins
    and failures, lockouts, account changes, imports, exports, model and threshold changes. `details` is
    PHI-free JSON (hashed UIDs, codes, counts)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    target_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text, default="{}")
    client_address: Mapped[str | None] = mapped_column(String(64))


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    # Identifiers live here for the worklist; they never go into logs.
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # Who assigned patient_id (a hospital, a data set): one patient is the same (issuer, id); NULL = not given.
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(200))
    patient_age_years: Mapped[int | None] = mapped_column(Integer, index=True)
    patient_sex: Mapped[str | None] = mapped_column(String(1), index=True)
    study_date: Mapped[dt.date | None] = mapped_column(Date, index=True)
    study_description: Mapped[str | None] = mapped_column(String(200))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    # Denormalised from the images so that the worklist sorts and filters on one table.
    modality: Mapped[str | None] = mapped_column(String(16))
    view_position: Mapped[str | None] = mapped_column(String(32), index=True)
    status: Mapped[StudyStatus] = mapped_column(
        Enum(StudyStatus, name="study_status", native_enum=False, length=16),
        default=StudyStatus.new,
        index=True,
    )
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)

    reviewed_by: Mapped[User | None] = relationship()
    images: Mapped[list[Image]] = relationship(back_populates="study", order_by="Image.id")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_study_id", "study_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    source_format: Mapped[str] = mapped_column(String(8))
    file_sha256: Mapped[str] = mapped_column(String(64))
    pixel_sha256: Mapped[str] = mapped_column(String(64), index=True)
    file_size: Mapped[int] = mapped_column(Integer)
    original_filename: Mapped[str] = mapped_column(String(255))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    bits_stored: Mapped[int] = mapped_column(Integer)
    photometric_interpretation: Mapped[str] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    pixel_spacing_row_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_col_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_source: Mapped[str | None] = mapped_column(String(32))
    window_center: Mapped[float | None] = mapped_column(Float)
    window_width: Mapped[float | None] = mapped_column(Float)
    warnings: Mapped[str] = mapped_column(Text, default="")  # newline-separated, PHI-free
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    imported_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    study: Mapped[Study] = relationship(back_populates="images")


# --- AI results and reader verdicts ----------------------------------------------------------------------------
class Prediction(Base):
    """One model version's output on one image's pixels: computed once, shared by every reader and revisit."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("pixel_sha256", "model_id", "model_version", "weights_sha256", name="uq_prediction"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pixel_sha256: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(16))
    timings_ms: Mapped[float] = mapped_column(Float)
    result: Mapped[str] = mapped_column(
        Text
    )  # JSON; large arrays live in the image store, referenced by sha256
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GateOverride(Base):
    """A reader's decision to see the AI output on an image the quality gate refused, with the reason: one row
    per image, reader and gate model version (a new gate version asks again)."""

    __tablename__ = "gate_overrides"
    __table_args__ = (
        UniqueConstraint("image_id", "user_id", "model_id", "model_version", "weights_sha256", name="uq_gate_override"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    gate_reasons: Mapped[str] = mapped_column(Text)  # JSON list: what the gate said
    reason: Mapped[str] = mapped_column(Text)  # the reader's
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Decision(str, enum.Enum):
    accept = "accept"
    reject = "reject"
    uncertain = "uncertain"


class Verdict(Base):
    """A reader's current judgement of one AI statement; its history is in verdict_events."""

    __tablename__ = "verdicts"
    __table_args__ = (
        UniqueConstraint(
            "image_id", "reader_id", "item_kind", "item_key", "model_id", "model_version", name="uq_verdict"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    reader_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    item_kind: Mapped[str] = mapped_column(String(32))  # finding | box | anatomy | bone_suppression | ctr
    # e.g. the finding's label, "Cardiomegaly#0" for a box, "lungs" (before structures were items: "anatomy")
    item_key: Mapped[str] = mapped_column(String(128))
    decision: Mapped[Decision] = mapped_column(Enum(Decision, name="decision", native_enum=False, length=16))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_text: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    # The stored item judged (stable id); null for verdicts written before items were stored.
    prediction_item_id: Mapped[int | None] = mapped_column(ForeignKey("prediction_items.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class VerdictEvent(Base):
    """Append-only audit: every verdict as it was written, never updated or deleted."""

    __tablename__ = "verdict_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[Decision] = mapped_column(Enum(Decision, name="decision", native_enum=False, length=16))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_text: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelThreshold(Base):
    """Operating threshold per model version and label, editable by an admin (defaults come with the model)."""

    __tablename__ = "model_thresholds"
    __table_args__ = (UniqueConstraint("model_id", "model_version", "label", name="uq_model_threshold"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReportStatus(str, enum.Enum):
    draft = "draft"
    final = "final"


class ReportVersion(Base):
    """One saved version of a reader's report of a study. Append-only (database triggers refuse UPDATE and
    DELETE): every save is a new version whose parent is the newest one before it. A line of versions is
    (study, reader): the reader who owns the report; `author_id` wrote this version (the owner, or a
    radiologist or admin amending it). A `final` version is signed (`signed_by_id`, `signed_at`) and locks the
    line: after it only amendments (final, `amendment`, with their reason) are added. `generated`: the text was
    the draft made from the verdicts, unedited (the editor keeps following the verdicts). `consistency`: JSON
    of the consistency check of this text ({skipped, flags: [{finding, kind, report_text, ai_probability,
    acknowledged, note}], model}), or null where none ran."""

    __tablename__ = "report_versions"
    __table_args__ = (Index("ix_report_versions_line", "study_id", "reader_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    reader_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("report_versions.id"))
    status: Mapped[ReportStatus] = mapped_column(Enum(ReportStatus, name="report_status", native_enum=False, length=16))
    amendment: Mapped[bool] = mapped_column(default=False)
    amendment_reason: Mapped[str | None] = mapped_column(Text)
    generated: Mapped[bool] = mapped_column(default=False)
    text: Mapped[str] = mapped_column(Text)
    consistency: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    signed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ActiveModel(Base):
    """The model version an admin chose for a task (natural key); without a row the registry's default runs."""

    __tablename__ = "active_models"

    task: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    set_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    set_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ActiveModelEvent(Base):
    """Append-only audit of active-model choices, never updated or deleted. A row without model_id records a
    return to the registry's default."""

    __tablename__ = "active_model_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(32), index=True)
    model_id: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    set_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- review items, annotations, labelling tasks --------------------------------------------------------------
class PredictionItem(Base):
    """One AI statement of a stored prediction (a finding's score, a box, an anatomy structure, the CTR, the
    bone view) with a stable id: verdicts and annotations point at it. A prediction never changes, so neither do
    its items; `key` is unique within the prediction (the finding label, "Cardiomegaly#0" for its first box,
    "lungs"). Derived by services.analysis.prediction_items and stored with the prediction."""

    __tablename__ = "prediction_items"
    __table_args__ = (UniqueConstraint("prediction_id", "kind", "key", name="uq_prediction_item"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # finding | box | anatomy | ctr | bone_suppression
    key: Mapped[str] = mapped_column(String(128))
    label: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    # JSON: a box {x, y, w, h} in image pixels; the CTR's lines; store keys of the picture it refers to
    geometry: Mapped[str | None] = mapped_column(Text)


class AnnotationStatus(str, enum.Enum):
    draft = "draft"  # saved automatically while the reader works
    submitted = "submitted"  # the reader's reading is over
    final = "final"  # the adjudicated truth of the image (set by an adjudicator)


class LabellingTask(Base):
    """A set of images to label, with its schema, readers and order. `schema` is JSON: {"findings": [...],
    "boxes": [...], "structures": [...]}; `queue_order` is random | uncertainty | model_disagreement |
    rejected_first."""

    __tablename__ = "labelling_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    schema: Mapped[str] = mapped_column(Text)
    readers_per_image: Mapped[int] = mapped_column(Integer, default=1)
    blinded: Mapped[bool] = mapped_column(default=False)
    queue_order: Mapped[str] = mapped_column(String(32), default="random")
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabellingTaskImage(Base):
    """An image of a task and its place in the queue (lower first), fixed when the task is made."""

    __tablename__ = "labelling_task_images"

    task_id: Mapped[int] = mapped_column(ForeignKey("labelling_tasks.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    priority: Mapped[float] = mapped_column(Float)


class LabellingTaskReader(Base):
    """A reader of a task; an adjudicator sets the final labels of its images."""

    __tablename__ = "labelling_task_readers"

    task_id: Mapped[int] = mapped_column(ForeignKey("labelling_tasks.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    adjudicator: Mapped[bool] = mapped_column(default=False)


class AnnotationVersion(Base):
    """One saved version of a reader's labels of one image: image-level findings, boxes, polygons and a label
    map. Append-only (database triggers refuse UPDATE and DELETE): a change is a new version whose parent is
    the version it was edited from (or none, with `proposal_prediction_id` when it started from the AI's
    proposal). A line of versions is (image, task, reader) for readers' work, (image, task) for finals.
    `conflict_with_id`: saved from a parent that was no longer the newest of its line (both are kept)."""

    __tablename__ = "annotation_versions"
    __table_args__ = (Index("ix_annotation_versions_line", "image_id", "task_id", "reader_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("labelling_tasks.id", ondelete="CASCADE"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[AnnotationStatus] = mapped_column(
        Enum(AnnotationStatus, name="annotation_status", native_enum=False, length=16)
    )
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("annotation_versions.id"))
    proposal_prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    conflict_with_id: Mapped[int | None] = mapped_column(ForeignKey("annotation_versions.id"))
    labels: Mapped[str] = mapped_column(Text, default="{}")  # JSON {finding: present | absent | uncertain}
    boxes: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{label, x, y, w, h, item_id?}]
    polygons: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{label, points: [[x, y], ...]}]
    label_map_sha256: Mapped[str | None] = mapped_column(String(64))  # PNG in the image store, 0..3
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- researcher workbench: evaluation sets, runs, threshold sets -----------------------------------------------
class EvalSet(Base):
    """One version of a named evaluation set: images (stored studies, or files of a folder) with ground truth
    from one source (`truth_source`: csv | verdicts | annotations). A version is identified by
    `content_sha256`, the hash of its file list and labels: making the set again with the same content gives
    the same version, other content the next one. `findings`: JSON list of the findings labelled; `report`:
    JSON per-row problems of the import (rows left out, with the reason)."""

    __tablename__ = "eval_sets"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_eval_set_version"),
        UniqueConstraint("name", "content_sha256", name="uq_eval_set_content"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # folder | database
    truth_source: Mapped[str] = mapped_column(String(16))
    folder: Mapped[str | None] = mapped_column(Text)
    findings: Mapped[str] = mapped_column(Text, default="[]")
    n_items: Mapped[int] = mapped_column(Integer)
    report: Mapped[str] = mapped_column(Text, default="[]")
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EvalSetItem(Base):
    """One image of an evaluation set and its ground truth (`labels`: JSON {finding: true | false | null},
    null where the source has no usable answer, e.g. uncertain). An item is a stored image (`image_id`) or a
    file of the set's folder (`file_name`); `pixel_sha256` is what model results are cached by."""

    __tablename__ = "eval_set_items"
    __table_args__ = (Index("ix_eval_set_items_set", "set_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("eval_sets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    file_name: Mapped[str | None] = mapped_column(String(255))
    pixel_sha256: Mapped[str] = mapped_column(String(64))
    labels: Mapped[str] = mapped_column(Text, default="{}")
    patient_sex: Mapped[str | None] = mapped_column(String(1))
    patient_age_years: Mapped[int | None] = mapped_column(Integer)
    view_position: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(64))


class EvalRun(Base):
    """One model version run on one evaluation set in the background: its progress is kept here so that it
    survives a page reload, and an interrupted run is picked up again (status queued | running | done |
    failed). `missing`: JSON list of the items whose image could not be read, with the reason."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("eval_sets.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    n_total: Mapped[int] = mapped_column(Integer)
    n_done: Mapped[int] = mapped_column(Integer, default=0)
    n_reused: Mapped[int] = mapped_column(Integer, default=0)
    missing: Mapped[str] = mapped_column(Text, default="[]")
    error: Mapped[str | None] = mapped_column(Text)
    resumed: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Set by the worker that claimed the run: only its holder writes progress, so a worker whose run was
    # requeued and claimed by another process stops instead of writing over it.
    worker_token: Mapped[str | None] = mapped_column(String(32))


class ThresholdSet(Base):
    """A named, versioned set of operating thresholds (JSON {finding: threshold}) bound to one classification
    model version, with how it was chosen: `rule` (target_sensitivity | target_specificity | youden | max_f1 |
    manual), its `target`, the evaluation set it was chosen on, who and when."""

    __tablename__ = "threshold_sets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_threshold_set_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    thresholds: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(String(32))
    target: Mapped[float | None] = mapped_column(Float)
    # JSON {finding: {"rule", "target"}}: each finding's own rule where they differ (rule is then per_finding)
    rules: Mapped[str | None] = mapped_column(Text)
    eval_set_id: Mapped[int | None] = mapped_column(ForeignKey("eval_sets.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ThresholdSetActivation(Base):
    """Append-only history of which threshold set is in force for a model version (database triggers refuse
    UPDATE and DELETE): the newest row wins; a row without a set returns to the model's defaults."""

    __tablename__ = "threshold_set_activations"
    __table_args__ = (Index("ix_threshold_set_activations_model", "model_id", "model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    threshold_set_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_sets.id"))
    set_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A rollback undoes the activation before it: a second rollback walks past both to the one before.
    is_rollback: Mapped[bool] = mapped_column(default=False, server_default=false())
