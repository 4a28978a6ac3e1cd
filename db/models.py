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
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
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
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    # Identifiers live here for the worklist; they never go into logs.
    patient_id: Mapped[str | None] = mapped_column(String(64))
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
