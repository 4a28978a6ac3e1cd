"""Local accounts: argon2id password hashes, roles, the first admin, sign-in sessions (idle timeout, bound to
the signing-in address), lockout after repeated failures, a per-client slowdown, and the account changes an
admin makes. Every sign-in, failure, lockout and account change is written to the audit in the same
transaction as the change itself."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine

from db import accounts, audit
from db import engine as dbe
from db.models import Role

log = logging.getLogger(__name__)
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-password")
MIN_PASSWORD_LENGTH = 10
SESSION_HOURS = 12.0  # a reading shift; after that the reader signs in again
IDLE_MINUTES = 30.0  # no action for this long ends the session
SESSION_KEEP_DAYS = 30  # expired sessions older than this are deleted at the next sign-in
TOUCH_EVERY_S = 60  # how stale a session's last_seen_at may get before an action writes it again
LOCKOUT_FAILURES = 10  # failed sign-ins for one user name within LOCKOUT_WINDOW lock it for LOCKOUT_DURATION
LOCKOUT_WINDOW = dt.timedelta(minutes=15)
LOCKOUT_DURATION = dt.timedelta(minutes=15)
CLIENT_FREE_FAILURES = 5  # failures from one client (any names) before each further try has to wait
CLIENT_MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    username: str
    role: str
    must_change_password: bool = False


@dataclass(frozen=True)
class Locked:
    """Too many failed sign-ins for this user name (said the same way whether the account exists or not)."""

    until: dt.datetime

    @property
    def message(self) -> str:
        local = self.until.astimezone()
        return f"Too many failed attempts; try again after {local:%H:%M} ({local:%Z})."


@dataclass(frozen=True)
class SlowDown:
    """This client failed too often lately: it has to wait before the next try (no password was checked)."""

    wait_s: float

    @property
    def message(self) -> str:
        return f"Too many failed sign-ins from this computer; wait {max(1, round(self.wait_s))} s and try again."


class AuthError(Exception):
    pass


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def _check_username(username: str) -> None:
    if not username or len(username) > 64 or not all(c.isalnum() or c in "._-" for c in username):
        raise AuthError("user name must be 1-64 letters, digits, '.', '_' or '-'")


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise AuthError(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _actor_id(actor: SignedIn | None) -> int | None:
    return actor.user_id if actor is not None else None


def _via(actor: SignedIn | None) -> dict:
    return {} if actor is not None else {"via": "command line"}


def _user_or_fail(s, username: str):
    user = accounts.get_user_by_name(s, username)
    if user is None:
        raise AuthError(f"user {username!r} does not exist")
    return user


# --- accounts ------------------------------------------------------------------------------------------------
def add_user(
    engine: Engine, username: str, role: str, password: str | None = None, actor: SignedIn | None = None
) -> str:
    """Create an account; returns the password. A generated one is a one-time password (shown once to the
    caller): the user must change it at the first sign-in."""
    _check_username(username)
    role_ = _role(role)
    one_time = not password
    password = password or secrets.token_urlsafe(12)
    _check_password(password)
    hashed = _hasher.hash(password)

    def tx(s):
        if accounts.get_user_by_name(s, username) is not None:
            raise AuthError(f"user {username!r} already exists")
        user = accounts.add_user(s, username, hashed, role_, must_change_password=one_time)
        audit.add(s, "user_added", actor_id=_actor_id(actor), target_user_id=user.id, target=username,
                  details={"role": role_.value, "one_time_password": one_time, **_via(actor)})  # fmt: skip

    dbe.write(engine, tx)
    return password


def ensure_first_admin(engine: Engine, password: str | None) -> str | None:
    """On an empty user table, create 'admin'; returns its password to print once, else None."""
    with dbe.read(engine) as s:
        if accounts.count_users(s):
            return None
    return add_user(engine, "admin", Role.admin.value, password)


def _keep_an_admin(s, user, *, role: Role | None = None, active: bool | None = None) -> None:
    """Refuse a change that would leave no active admin (nobody could manage accounts in the browser)."""
    stays_admin = (role or user.role) == Role.admin and (user.is_active if active is None else active)
    if user.role == Role.admin and user.is_active and not stays_admin and accounts.count_active_admins(s) <= 1:
        raise AuthError(f"{user.username!r} is the last active admin; make another admin first")


def set_active(engine: Engine, username: str, active: bool, actor: SignedIn | None = None) -> None:
    """Disable (its sessions end at once) or enable an account."""

    def tx(s):
        user = _user_or_fail(s, username)
        if user.is_active == active:
            return
        _keep_an_admin(s, user, active=active)
        user.is_active = active
        if not active:
            accounts.end_sign_in_sessions(s, _now(), user_id=user.id)
        audit.add(s, "user_enabled" if active else "user_disabled", actor_id=_actor_id(actor),
                  target_user_id=user.id, target=username, details=_via(actor))  # fmt: skip

    dbe.write(engine, tx)


def set_role(engine: Engine, username: str, role: str, actor: SignedIn | None = None) -> None:
    role_ = _role(role)

    def tx(s):
        user = _user_or_fail(s, username)
        if user.role == role_:
            return
        _keep_an_admin(s, user, role=role_)
        before, user.role = user.role.value, role_
        audit.add(s, "role_changed", actor_id=_actor_id(actor), target_user_id=user.id, target=username,
                  details={"from": before, "to": role_.value, **_via(actor)})  # fmt: skip

    dbe.write(engine, tx)


def reset_password(
    engine: Engine, username: str, actor: SignedIn | None = None, password: str | None = None
) -> str:
    """A new one-time password (generated unless given): the user's sessions end, any lockout is lifted,
    and the user must choose a new password at the next sign-in. Returns the password to hand over."""
    password = password or secrets.token_urlsafe(12)
    _check_password(password)
    hashed = _hasher.hash(password)

    def tx(s):
        user = _user_or_fail(s, username)
        user.password_hash, user.must_change_password = hashed, True
        accounts.end_sign_in_sessions(s, _now(), user_id=user.id)
        accounts.clear_throttle(s, username)
        audit.add(s, "password_reset", actor_id=_actor_id(actor), target_user_id=user.id, target=username,
                  details=_via(actor))  # fmt: skip

    dbe.write(engine, tx)
    return password


def unlock(engine: Engine, username: str, actor: SignedIn | None = None) -> bool:
    """Lift the lockout of a user name and forget its failed attempts; False when it was not locked."""

    def tx(s):
        row = accounts.throttle(s, username)
        locked = row is not None and row.locked_until is not None and row.locked_until > _now()
        accounts.clear_throttle(s, username)
        if locked:
            user = accounts.get_user_by_name(s, username)
            audit.add(s, "unlock", actor_id=_actor_id(actor), target_user_id=user.id if user else None,
                      target=username, details=_via(actor))  # fmt: skip
        return locked

    return dbe.write(engine, tx)


def locked_names(engine: Engine) -> dict[str, dt.datetime]:
    """User names locked now, with when their lockout ends."""
    now = _now()
    with dbe.read(engine) as s:
        return {
            name: row.locked_until
            for name in [u.username for u in accounts.list_users(s)]
            if (row := accounts.throttle(s, name)) is not None and row.locked_until and row.locked_until > now
        }


def set_password(
    engine: Engine,
    username: str,
    password: str,
    keep_session: str | None = None,
    end_sessions: bool = True,
    actor: SignedIn | None = None,
) -> None:
    """The user's own new password; with `end_sessions`, every other signed-in session of the user ends with
    the old one (`keep_session`: the token of the session that made the change, which stays open). A
    one-time password cannot be kept as the new one."""
    _check_password(password)
    hashed = _hasher.hash(password)

    def tx(s):
        user = _user_or_fail(s, username)
        if user.must_change_password and _verifies(user.password_hash, password):
            raise AuthError("choose a password other than the one-time password")
        user.password_hash, user.must_change_password = hashed, False
        if end_sessions:
            keep = _token_sha256(keep_session) if keep_session else None
            accounts.end_sign_in_sessions(s, _now(), user_id=user.id, except_token_sha256=keep)
            audit.add(s, "password_changed", actor_id=_actor_id(actor) or user.id, target_user_id=user.id,
                      target=username)  # fmt: skip

    dbe.write(engine, tx)


def _verifies(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


# --- sign-in -------------------------------------------------------------------------------------------------
class _ClientThrottle:
    """Per-client slowdown, in this process: after CLIENT_FREE_FAILURES failures within LOCKOUT_WINDOW, each
    further try must wait 1, 2, 4, ... s (at most CLIENT_MAX_WAIT_S) after the previous failure. It slows a
    guesser who rotates user names, which the per-name lockout does not see."""

    def __init__(self):
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(client, now)
            extra = len(times) - CLIENT_FREE_FAILURES
            if extra < 0:
                return 0.0
            return max(0.0, times[-1] + min(2.0**extra, CLIENT_MAX_WAIT_S) - now)

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._failures) > 10_000:  # an address flood: forget the quiet ones
                for key in [k for k, v in self._failures.items() if not v or v[-1] < now - 60]:
                    del self._failures[key]

    def forget(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and times[0] < now - LOCKOUT_WINDOW.total_seconds():
            times.popleft()
        return times


clients = _ClientThrottle()


def _name_key(username: str) -> str:
    return username[:64]


def authenticate(
    engine: Engine, username: str, password: str, client: str | None = None
) -> SignedIn | Locked | SlowDown | None:
    """The user, or why not: Locked (this user name failed too often; the password was not checked),
    SlowDown (this client failed too often; nothing was checked), None (wrong name or password, or a disabled
    account: one answer for all, so a guesser learns nothing). Failures and lockouts are audited.
    `client`: the browser's address (None on the command line, which is not slowed down)."""
    if client is not None and (wait := clients.wait_s(client)) > 0:
        return SlowDown(wait)
    name, now = _name_key(username), _now()
    with dbe.read(engine) as s:
        row = accounts.throttle(s, name)
        locked_until = row.locked_until if row is not None and row.locked_until and row.locked_until > now else None
        user = accounts.get_user_by_name(s, name) if name == username else None
        found = (
            SignedIn(user.id, user.username, user.role.value, user.must_change_password)
            if user is not None and user.is_active
            else None
        )
        stored = user.password_hash if found is not None else _DUMMY_HASH
        user_id = user.id if user is not None else None
    if locked_until is not None:
        _record_failure(engine, name, user_id, client, "locked", now)
        return Locked(locked_until)
    ok = _verifies(stored, password)
    if ok and found is not None:
        if _hasher.check_needs_rehash(stored):
            _rehash(engine, found.username, password)
        return found
    reason = "disabled" if user is not None and found is None else "wrong_password" if user else "unknown_user"
    if client is not None:
        clients.failed(client)
    lock = _record_failure(engine, name, user_id, client, reason, now)
    return Locked(lock) if lock is not None else None


def _record_failure(engine, name, user_id, client, reason, now) -> dt.datetime | None:
    """Audit one failed sign-in and count it; returns the lockout's end when this failure starts one."""

    def tx(s):
        details = {"reason": reason}
        if user_id is None:  # a typed name that is no account may be a mistyped password: only its hash
            details["name_sha256"] = hashlib.sha256(name.encode()).hexdigest()[:16]
        if reason == "locked":
            audit.add(s, "sign_in_failed", target_user_id=user_id, target=name if user_id else None,
                      details=details, client_address=client, at=now)  # fmt: skip
            return None
        row = accounts.record_failure(s, name, now, LOCKOUT_WINDOW)
        details["failures"] = row.failures
        audit.add(s, "sign_in_failed", target_user_id=user_id, target=name if user_id else None,
                  details=details, client_address=client, at=now)  # fmt: skip
        if row.failures >= LOCKOUT_FAILURES and (row.locked_until is None or row.locked_until <= now):
            row.locked_until = now + LOCKOUT_DURATION
            lock_details = {"until": row.locked_until.isoformat(), "failures": row.failures}
            if user_id is None:
                lock_details["name_sha256"] = details["name_sha256"]
            audit.add(s, "lockout", target_user_id=user_id, target=name if user_id else None,
                      details=lock_details, client_address=client, at=now)  # fmt: skip
            return row.locked_until
        return None

    try:
        return dbe.write(engine, tx)
    except dbe.DatabaseBusy:
        log.warning("a failed sign-in could not be recorded: the database is busy")
        return None


def _rehash(engine: Engine, username: str, password: str) -> None:
    hashed = _hasher.hash(password)

    def tx(s):
        _user_or_fail(s, username).password_hash = hashed

    dbe.write(engine, tx)


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(
    engine: Engine, user: SignedIn, hours: float = SESSION_HOURS, client: str | None = None
) -> tuple[str, dt.datetime]:
    """A new sign-in session for `user`: (its random token, when it expires). The database keeps only the
    token's sha256; the browser's cookie expires with the session. A successful sign-in forgets the user
    name's failed attempts, and is audited."""
    token = secrets.token_urlsafe(32)
    now = _now()
    expires = now + dt.timedelta(hours=hours)

    def tx(s):
        # Sessions are kept a while after they expire (who was signed in when), then dropped here, so the
        # table stays as small as the recent sign-ins.
        accounts.prune_sign_in_sessions(s, now - dt.timedelta(days=SESSION_KEEP_DAYS))
        accounts.add_sign_in_session(s, _token_sha256(token), user.user_id, expires, client)
        accounts.clear_throttle(s, user.username)
        audit.add(s, "sign_in", actor_id=user.user_id, target_user_id=user.user_id, target=user.username,
                  client_address=client, at=now)  # fmt: skip

    dbe.write(engine, tx)
    if client is not None:
        clients.forget(client)
    return token, expires


def resume_session(
    engine: Engine, token: str | None, client: str | None = None
) -> tuple[SignedIn, dt.datetime] | None:
    """(user, expiry) of a session token that is open, unexpired, not idle for IDLE_MINUTES, from the address
    that signed in, and whose account is active (with the account's role now: the pages check it at every
    rerun, so a role change applies at the next action); else None. Counts as activity."""
    if not isinstance(token, str) or not token or len(token) > 128:
        return None
    now, digest = _now(), _token_sha256(token)
    with dbe.read(engine) as s:
        found = accounts.open_session(s, digest, now, now - dt.timedelta(minutes=IDLE_MINUTES))
        if found is None:
            return None
        session, user = found
        if session.client_address is not None and session.client_address != client:
            log.warning("a session cookie came from another address than the one that signed in; refused")
            return None
        seen = session.last_seen_at or session.created_at
        result = SignedIn(user.id, user.username, user.role.value, user.must_change_password), session.expires_at
    if (now - seen).total_seconds() >= TOUCH_EVERY_S:
        try:
            dbe.write(engine, lambda s: accounts.touch_session(s, digest, now))
        except dbe.DatabaseBusy:
            pass  # activity is recorded at the next action; a busy database does not sign anyone out
    return result


def end_session(engine: Engine, token: str | None, client: str | None = None) -> None:
    """Sign-out: the token no longer resumes a session (a no-op for an unknown or ended token)."""
    if not token:
        return
    now, digest = _now(), _token_sha256(token)

    def tx(s):
        if accounts.end_sign_in_sessions(s, now, token_sha256=digest):
            user = accounts.session_owner(s, digest)
            audit.add(s, "sign_out", actor_id=user.id, target_user_id=user.id, target=user.username,
                      client_address=client, at=now)  # fmt: skip

    dbe.write(engine, tx)
