"""Append-only tables: database triggers that refuse UPDATE and DELETE, for the migrations that make such tables
(0005 audit tables, 0006 annotation versions, 0007 report versions). Old migrations call these, so what they
emit must never change; a new kind of trigger is a new function."""

from __future__ import annotations


def create_function(op) -> None:
    """PostgreSQL's trigger function, once (0005); SQLite triggers need none."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION cxr_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$"
        )


def drop_function(op) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION cxr_append_only()")


def add(op, table: str) -> None:
    """Refuse UPDATE and DELETE on `table`: one trigger on PostgreSQL, one per verb on SQLite."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION cxr_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def remove(op, table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    else:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER {table}_no_{verb}")
