"""Local accounts: argon2id password hashes, roles, the first admin."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine

from db import engine as dbe
from db import repo
from db.models import Role

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-password")
MIN_PASSWORD_LENGTH = 10
SESSION_HOURS = 12.0  # a reading shift; after that the reader signs in again
SESSION_KEEP_DAYS = 30  # expired sessions older than this are deleted at the next sign-in


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    username: str
    role: str


class AuthError(Exception):
    pass


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def _check_username(username: str) -> None:
    if not username or len(username) > 64 or not all(c.isalnum() or c in "._-" for c in username):
        raise AuthError("user name must be 1-64 letters, digits, '.', '_' or '-'")


def add_user(engine: Engine, username: str, role: str, password: str | None = None) -> str:
    """Create an account; returns the password (generated when none is given, shown once to the caller)."""
    _check_username(username)
    try:
        role_ = Role(role)
    except ValueError as exc:
        raise AuthError(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from exc
    password = password or secrets.token_urlsafe(12)
    _check_password(password)
    hashed = _hasher.hash(password)

    def tx(s):
        if repo.get_user_by_name(s, username) is not None:
            raise AuthError(f"user {username!r} already exists")
        repo.add_user(s, username, hashed, role_)

    dbe.write(engine, tx)
    return password


def ensure_first_admin(engine: Engine, password: str | None) -> str | None:
    """On an empty user table, create 'admin'; returns its password to print once, else None."""
    with dbe.read(engine) as s:
        if repo.count_users(s):
            return None
    return add_user(engine, "admin", Role.admin.value, password)


def authenticate(engine: Engine, username: str, password: str) -> SignedIn | None:
    with dbe.read(engine) as s:
        user = repo.get_user_by_name(s, username)
        stored = user.password_hash if user is not None and user.is_active else _DUMMY_HASH
        found = (user.id, user.username, user.role.value) if user is not None and user.is_active else None
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if found is None:
        return None
    if _hasher.check_needs_rehash(stored):
        set_password(engine, found[1], password, end_sessions=False)
    return SignedIn(*found)


def set_password(
    engine: Engine, username: str, password: str, keep_session: str | None = None, end_sessions: bool = True
) -> None:
    """A new password; with `end_sessions`, every other signed-in session of the user ends with the old one
    (`keep_session`: the token of the session that made the change, which stays open)."""
    _check_password(password)
    hashed = _hasher.hash(password)

    def tx(s):
        user = repo.get_user_by_name(s, username)
        if user is None:
            raise AuthError(f"user {username!r} does not exist")
        user.password_hash = hashed
        if end_sessions:
            keep = _token_sha256(keep_session) if keep_session else None
            repo.end_sign_in_sessions(s, dt.datetime.now(dt.UTC), user_id=user.id, except_token_sha256=keep)

    dbe.write(engine, tx)


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(engine: Engine, user: SignedIn, hours: float = SESSION_HOURS) -> tuple[str, dt.datetime]:
    """A new sign-in session for `user`: (its random token, when it expires). The database keeps only the
    token's sha256; the browser's cookie expires with the session."""
    token = secrets.token_urlsafe(32)
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(hours=hours)

    def tx(s):
        # Sessions are kept a while after they expire (who was signed in when), then dropped here, so the
        # table stays as small as the recent sign-ins.
        repo.prune_sign_in_sessions(s, now - dt.timedelta(days=SESSION_KEEP_DAYS))
        repo.add_sign_in_session(s, _token_sha256(token), user.user_id, expires)

    dbe.write(engine, tx)
    return token, expires


def resume_session(engine: Engine, token: str | None) -> tuple[SignedIn, dt.datetime] | None:
    """(user, expiry) of a session token that is open, unexpired and whose account is active (with the
    account's role now: the pages check it at every rerun, so a role change applies at the next action),
    else None."""
    if not isinstance(token, str) or not token or len(token) > 128:
        return None
    with dbe.read(engine) as s:
        found = repo.session_user(s, _token_sha256(token), dt.datetime.now(dt.UTC))
        if found is None:
            return None
        user, expires = found
        return SignedIn(user.id, user.username, user.role.value), expires


def end_session(engine: Engine, token: str | None) -> None:
    """Sign-out: the token no longer resumes a session (a no-op for an unknown or ended token)."""
    if token:
        now = dt.datetime.now(dt.UTC)
        dbe.write(engine, lambda s: repo.end_sign_in_sessions(s, now, token_sha256=_token_sha256(token)))
