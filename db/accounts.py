"""Accounts aggregate: users, their sign-in sessions and the failed-sign-in throttle. Each function takes a
Session and never commits (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Role, SignInSession, SignInThrottle, User, UserPreference


# --- users -------------------------------------------------------------------------------------------------
def count_users(s: Session) -> int:
    return s.scalar(select(func.count(User.id))) or 0


def count_active_admins(s: Session) -> int:
    return s.scalar(select(func.count(User.id)).where(User.role == Role.admin, User.is_active.is_(True))) or 0


def get_user_by_name(s: Session, username: str) -> User | None:
    return s.scalar(select(User).where(User.username == username))


def list_users(s: Session) -> list[User]:
    return list(s.scalars(select(User).order_by(User.username)))


def names(s: Session) -> dict[int, str]:
    """{user id: user name} of every account (who made or changed something, for display)."""
    return dict(s.execute(select(User.id, User.username)).all())


def add_user(s: Session, username: str, password_hash: str, role: Role, must_change_password: bool = False) -> User:
    user = User(username=username, password_hash=password_hash, role=role, must_change_password=must_change_password)
    s.add(user)
    s.flush()
    return user


# --- sign-in sessions ----------------------------------------------------------------------------------------
def add_sign_in_session(
    s: Session, token_sha256: str, user_id: int, expires_at: dt.datetime, client_address: str | None = None
) -> None:
    s.add(
        SignInSession(
            token_sha256=token_sha256, user_id=user_id, expires_at=expires_at, client_address=client_address,
            last_seen_at=None,
        )
    )  # fmt: skip


def prune_sign_in_sessions(s: Session, expired_before: dt.datetime) -> int:
    """Delete sessions that expired before `expired_before` (ended ones included); returns how many."""
    return s.execute(delete(SignInSession).where(SignInSession.expires_at < expired_before)).rowcount


def open_session(s: Session, token_sha256: str, now: dt.datetime, idle_before: dt.datetime):
    """(session, user) of a session that has not ended, expired or idled (no activity since `idle_before`),
    whose account is active; else None."""
    row = s.execute(
        select(SignInSession, User)
        .join(User, SignInSession.user_id == User.id)
        .where(
            SignInSession.token_sha256 == token_sha256,
            SignInSession.ended_at.is_(None),
            SignInSession.expires_at > now,
            or_(
                SignInSession.last_seen_at > idle_before,
                SignInSession.last_seen_at.is_(None) & (SignInSession.created_at > idle_before),
            ),
            User.is_active.is_(True),
        )
    ).first()
    return None if row is None else (row[0], row[1])


def touch_session(s: Session, token_sha256: str, now: dt.datetime) -> None:
    s.execute(update(SignInSession).where(SignInSession.token_sha256 == token_sha256).values(last_seen_at=now))


def end_sign_in_sessions(
    s: Session,
    now: dt.datetime,
    token_sha256: str | None = None,
    user_id: int | None = None,
    except_token_sha256: str | None = None,
) -> int:
    """End one session (by token) or every open session of a user (but one); returns how many were open."""
    if token_sha256 is None and user_id is None:
        raise ValueError("end_sign_in_sessions needs a token or a user, never every session at once")
    query = update(SignInSession).where(SignInSession.ended_at.is_(None))
    if token_sha256 is not None:
        query = query.where(SignInSession.token_sha256 == token_sha256)
    if user_id is not None:
        query = query.where(SignInSession.user_id == user_id)
    if except_token_sha256 is not None:
        query = query.where(SignInSession.token_sha256 != except_token_sha256)
    return s.execute(query.values(ended_at=now)).rowcount


def session_owner(s: Session, token_sha256: str) -> User | None:
    """The user a session token belongs to, whatever the session's state (for the audit of a sign-out)."""
    return s.scalar(
        select(User).join(SignInSession, SignInSession.user_id == User.id).where(
            SignInSession.token_sha256 == token_sha256
        )
    )


# --- failed sign-ins -----------------------------------------------------------------------------------------
def throttle(s: Session, key: str) -> SignInThrottle | None:
    return s.get(SignInThrottle, key)


def locks(s: Session, keys: list[str], now: dt.datetime) -> dict[str, dt.datetime]:
    """{key: end} of the lockouts in force among `keys`."""
    rows = s.execute(
        select(SignInThrottle.name_sha256, SignInThrottle.locked_until).where(
            SignInThrottle.name_sha256.in_(keys), SignInThrottle.locked_until > now
        )
    )
    return dict(rows.all())


def new_throttle(s: Session, key: str, now: dt.datetime) -> SignInThrottle:
    row = SignInThrottle(name_sha256=key, failures=0, window_start=now)
    s.add(row)
    s.flush()
    return row


def prune_throttle(s: Session, window_start_before: dt.datetime, now: dt.datetime) -> int:
    """Drop counts whose window has passed and that lock nothing now (the table stays as small as the recent
    failures)."""
    return s.execute(
        delete(SignInThrottle).where(
            SignInThrottle.window_start < window_start_before,
            or_(SignInThrottle.locked_until.is_(None), SignInThrottle.locked_until < now),
        )
    ).rowcount


def clear_throttle(s: Session, key: str) -> bool:
    """Forget the failures and any lockout of a name (by its key); True when there were any."""
    return bool(s.execute(delete(SignInThrottle).where(SignInThrottle.name_sha256 == key)).rowcount)


# --- preferences ---------------------------------------------------------------------------------------------
def preference(s: Session, user_id: int, key: str) -> str | None:
    row = s.get(UserPreference, (user_id, key))
    return None if row is None else row.value


def set_preference(s: Session, user_id: int, key: str, value: str) -> None:
    row = s.get(UserPreference, (user_id, key))
    if row is None:
        s.add(UserPreference(user_id=user_id, key=key, value=value))
    else:
        row.value, row.updated_at = value, dt.datetime.now(dt.UTC)
