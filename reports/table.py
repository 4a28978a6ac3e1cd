"""Reports from a CSV file: one row per report, the id and the text columns (and any others asked for).

A bad row never stops the file: a row whose id or text is not UTF-8, whose id is empty or repeated, or whose
text is empty comes back as a `Problem` and the rows around it as `Row`s. A file that cannot be read as a
table of reports (no such file, header not UTF-8, a column missing) raises `TableError`.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from reports.labeller import has_read_text

# Report text can be long; the csv module's default field limit (128 KiB) is not about reports.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class TableError(Exception):
    """The file cannot be read as a table of reports (a usage error)."""


@dataclass(frozen=True)
class Row:
    line: int  # line of the file where the record starts (the header is line 1)
    id: str
    parts: list[tuple[str, str]]  # (text column, its text), in the order asked for
    other: dict[str, str]  # the other columns asked for


@dataclass(frozen=True)
class Problem:
    line: int
    id: str | None  # None when the id itself is unreadable
    code: str  # "not_utf8", "empty_text" (nothing in the sections read), "empty_id", "duplicate_id",
    # "bad_csv"
    message: str

    def to_json(self) -> dict:
        return asdict(self)


def _decodable(value: str) -> bool:
    try:
        value.encode("utf-8")  # undecodable bytes were kept as lone surrogates, which do not encode
    except UnicodeEncodeError:
        return False
    return True


def read(
    path: str | Path, id_column: str, text_columns: Sequence[str], other_columns: Sequence[str] = ()
) -> Iterator[Row | Problem]:
    """Rows and problems of a UTF-8 CSV file (a byte order mark is allowed), in file order."""
    try:
        f = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror}") from exc
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise TableError(f"{path}: the header is not a CSV line ({exc})") from exc
        if header is None:
            raise TableError(f"{path} is empty")
        if not all(_decodable(h) and "\0" not in h for h in header):
            raise TableError(f"{path}: the header is not UTF-8 text (is the file UTF-8 encoded?)")
        wanted = [id_column, *text_columns, *other_columns]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise TableError(
                f"{path}: no column {', '.join(map(repr, missing))}; the columns are: "
                + ", ".join(map(repr, header))
            )
        index = {c: header.index(c) for c in wanted}
        seen: set[str] = set()
        line = reader.line_num + 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Problem(line, None, "bad_csv", f"not a CSV record: {exc}")
                line = reader.line_num + 1
                continue
            start, line = line, reader.line_num + 1
            if not record:
                continue  # a blank line
            cell = {c: record[i] if i < len(record) else "" for c, i in index.items()}
            report_id = cell[id_column].strip()
            bad = [c for c in wanted if not _decodable(cell[c])]
            if bad:
                shown = report_id if id_column not in bad else None
                yield Problem(
                    start, shown, "not_utf8", f"not UTF-8 text in column {', '.join(map(repr, bad))}"
                )
            elif not report_id:
                yield Problem(start, None, "empty_id", f"empty {id_column!r}")
            elif report_id in seen:
                yield Problem(
                    start, report_id, "duplicate_id", f"{id_column!r} {report_id!r} seen on an earlier row"
                )
            else:
                seen.add(report_id)
                parts = [(c, cell[c]) for c in text_columns]
                if has_read_text(parts):
                    yield Row(start, report_id, parts, {c: cell[c] for c in other_columns})
                else:
                    yield Problem(start, report_id, "empty_text", "no report text in the columns read")
