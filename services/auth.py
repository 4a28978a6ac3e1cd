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


def _hashed(password: str | None) -> tuple[str, str]:
    """(the password, generated when none is given, and its argon2id hash)."""
    password = password or secrets.token_urlsafe(12)
    _check_password(password)
    return password, _hasher.hash(password)


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
    engine: Engine,
    username: str,
    role: str,
    password: str | None = None,
    actor: SignedIn | None = None,
    one_time: bool | None = None,
) -> str:
    """Create an account; returns the password. A one-time password (by default when it is generated, shown
    once to the caller) must be changed by the user at the first sign-in."""
    _check_username(username)
    role_ = _role(role)
    one_time = not password if one_time is None else one_time
    password, hashed = _hashed(password)

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
    password, hashed = _hashed(password)

    def tx(s):
        user = _user_or_fail(s, username)
        user.password_hash, user.must_change_password = hashed, True
        accounts.end_sign_in_sessions(s, _now(), user_id=user.id)
        accounts.clear_throttle(s, _name_key(username))
        audit.add(s, "password_reset", actor_id=_actor_id(actor), target_user_id=user.id, target=username,
                  details=_via(actor))  # fmt: skip

    dbe.write(engine, tx)
    return password


def unlock(engine: Engine, username: str, actor: SignedIn | None = None) -> bool:
    """Lift the lockout of a user name and forget its failed attempts; False when it was not locked."""

    def tx(s):
        row = accounts.throttle(s, _name_key(username))
        locked = row is not None and row.locked_until is not None and row.locked_until > _now()
        accounts.clear_throttle(s, _name_key(username))
        if locked:
            user = accounts.get_user_by_name(s, username)
            audit.add(s, "unlock", actor_id=_actor_id(actor), target_user_id=user.id if user else None,
                      target=username, details=_via(actor))  # fmt: skip
        return locked

    return dbe.write(engine, tx)


def locked_names(engine: Engine) -> dict[str, dt.datetime]:
    """User names locked now, with when their lockout ends."""
    with dbe.read(engine) as s:
        names = {_name_key(u.username): u.username for u in accounts.list_users(s)}
        return {names[key]: until for key, until in accounts.locks(s, list(names), _now()).items()}


def set_password(
    engine: Engine,
    username: str,
    password: str,
    keep_session: str | None = None,
    *,
    current: str | None = None,
    client: str | None = None,
) -> None:
    """The user's own new password. Every other signed-in session of the user ends with the old one
    (`keep_session`: the token of the session that made the change, which stays open). `current`: the
    password now, checked like a sign-in (counted, and locked out after too many failures), so that a
    session left open cannot take the account over; the forced change of a one-time password right after
    signing in with it does not ask again. A one-time password cannot be kept as the new one."""
    _check_password(password)
    if current is not None:
        checked = authenticate(engine, username, current, client)
        if isinstance(checked, Locked | SlowDown):
            raise AuthError(checked.message)
        if checked is None:
            raise AuthError("the current password is wrong")
    with dbe.read(engine) as s:
        user = _user_or_fail(s, username)
        keeps_one_time = user.must_change_password and _verifies(user.password_hash, password)
    if keeps_one_time:
        raise AuthError("choose a password other than the one-time password")
    hashed = _hasher.hash(password)

    def tx(s):
        user = _user_or_fail(s, username)
        user.password_hash, user.must_change_password = hashed, False
        keep = _token_sha256(keep_session) if keep_session else None
        accounts.end_sign_in_sessions(s, _now(), user_id=user.id, except_token_sha256=keep)
        audit.add(s, "password_changed", actor_id=user.id, target_user_id=user.id, target=username,
                  client_address=client)  # fmt: skip

    dbe.write(engine, tx)


# --- sign-in -------------------------------------------------------------------------------------------------
class _ClientThrottle:
    """Per-client slowdown, in this process: after CLIENT_FREE_FAILURES sign-in attempts without a success
    within LOCKOUT_WINDOW, each further try must wait 1, 2, 4, ... s (at most CLIENT_MAX_WAIT_S) after the
    previous one. It slows a guesser who rotates user names, which the per-name lockout does not see. Attempts
    are counted when they start (check and count under one lock), so parallel tries get no more than serial
    ones; a success forgets the client's count."""

    def __init__(self):
        self._lock = threading.Lock()
        self._attempts: dict[str, deque[float]] = {}

    def attempt(self, client: str, now: float | None = None) -> float:
        """0 and the attempt counted, or the seconds to wait (nothing counted)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(client, now)
            extra = len(times) - CLIENT_FREE_FAILURES
            if extra >= 0 and (wait := times[-1] + min(2.0**extra, CLIENT_MAX_WAIT_S) - now) > 0:
                return wait
            times.append(now)
            if len(self._attempts) > 10_000:  # an address flood: forget the quiet ones
                for key in [k for k, v in self._attempts.items() if not v or v[-1] < now - CLIENT_MAX_WAIT_S]:
                    del self._attempts[key]
            return 0.0

    def forget(self, client: str) -> None:
        with self._lock:
            self._attempts.pop(client, None)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._attempts.setdefault(client, deque())
        while times and times[0] < now - LOCKOUT_WINDOW.total_seconds():
            times.popleft()
        return times


clients = _ClientThrottle()
# argon2id verifies with 64 MiB of memory: a burst of parallel sign-ins must not add up to gigabytes.
_VERIFY_SLOTS = threading.BoundedSemaphore(4)


def _client_key(client: str, name_key: str) -> str:
    """Browsers behind one address (loopback, or a proxy Streamlit does not see through) are told apart by the
    name they type, so that one guesser cannot make everybody wait."""
    return f"{client}/{name_key}" if client == "local" else client


def _name_key(username: str) -> str:
    """What the failed-sign-in count is kept under: a hash, never the typed text (it may be a password)."""
    return hashlib.sha256(username.encode()).hexdigest()


def _verifies(stored: str, password: str) -> bool:
    with _VERIFY_SLOTS:
        try:
            return _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def authenticate(
    engine: Engine, username: str, password: str, client: str | None = None
) -> SignedIn | Locked | SlowDown | None:
    """The user, or why not: Locked (this user name failed too often; the password was not checked),
    SlowDown (this client tried too often; nothing was checked), None (wrong name or password, or a disabled
    account: one answer for all, so a guesser learns nothing). Every attempt is counted before the password
    is checked, so parallel guesses get no more tries than serial ones. Failures and lockouts are audited.
    `client`: the browser's address (None on the command line, which is not slowed down)."""
    key = _name_key(username)
    if client is not None and (wait := clients.attempt(_client_key(client, key))) > 0:
        return SlowDown(wait)
    now = _now()
    with dbe.read(engine) as s:
        user = accounts.get_user_by_name(s, username) if len(username) <= 64 else None
        found = (
            SignedIn(user.id, user.username, user.role.value, user.must_change_password)
            if user is not None and user.is_active
            else None
        )
        stored = user.password_hash if found is not None else _DUMMY_HASH
        user_id = user.id if user is not None else None
    audit_as = {"target_user_id": user_id, "target": username if user_id else None, "client_address": client}
    locked_until = dbe.write(engine, lambda s: _count_attempt(s, key, now, audit_as))
    if locked_until is not None:
        return Locked(locked_until)
    if _verifies(stored, password) and found is not None:
        if _hasher.check_needs_rehash(stored):
            _rehash(engine, found.username, password)
        dbe.write(engine, lambda s: accounts.clear_throttle(s, key))
        if client is not None:
            clients.forget(_client_key(client, key))
        return found
    reason = "disabled" if user is not None and found is None else "wrong_password" if user else "unknown_user"
    lock = _record_failure(engine, key, reason, now, audit_as)
    return Locked(lock) if lock is not None else None


def _name_details(key: str, audit_as: dict) -> dict:
    # A typed name that is no account may be a mistyped password: the audit keeps only a prefix of its hash.
    return {} if audit_as["target_user_id"] else {"name_sha256": key[:16]}


def _count_attempt(s, key: str, now: dt.datetime, audit_as: dict) -> dt.datetime | None:
    """Before the password is checked: the end of a lockout in force (the refusal is audited), or None and
    this attempt counted against the name's budget (a success clears the count)."""
    accounts.prune_throttle(s, now - LOCKOUT_WINDOW, now)
    row = accounts.throttle(s, key) or accounts.new_throttle(s, key, now)
    lock_over = row.locked_until is not None and row.locked_until <= now
    if lock_over or (row.window_start <= now - LOCKOUT_WINDOW and row.locked_until is None):
        row.failures, row.window_start, row.locked_until = 0, now, None  # a fresh budget
    if row.failures >= LOCKOUT_FAILURES and not (row.locked_until and row.locked_until > now):
        _lock(s, row, key, now, audit_as)  # attempts still being checked used up the budget
    if row.locked_until and row.locked_until > now:
        audit.add(s, "sign_in_failed", details={"reason": "locked", **_name_details(key, audit_as)}, at=now,
                  **audit_as)  # fmt: skip
        return row.locked_until
    row.failures += 1
    return None


def _lock(s, row, key: str, now: dt.datetime, audit_as: dict) -> None:
    row.locked_until = now + LOCKOUT_DURATION
    details = {"until": row.locked_until.isoformat(), "failures": row.failures, **_name_details(key, audit_as)}
    audit.add(s, "lockout", details=details, at=now, **audit_as)


def _record_failure(engine, key: str, reason: str, now: dt.datetime, audit_as: dict) -> dt.datetime | None:
    """Audit one failed sign-in (counted already); returns the lockout's end when this failure starts one."""

    def tx(s):
        row = accounts.throttle(s, key) or accounts.new_throttle(s, key, now)
        details = {"reason": reason, "failures": row.failures, **_name_details(key, audit_as)}
        audit.add(s, "sign_in_failed", details=details, at=now, **audit_as)
        if row.failures >= LOCKOUT_FAILURES and not (row.locked_until and row.locked_until > now):
            _lock(s, row, key, now, audit_as)
            return row.locked_until
        return None

    try:
        return dbe.write(engine, tx)
    except dbe.DatabaseBusy:  # counted already, before the check: only the audit row is missing
        log.warning("a failed sign-in could not be audited: the database is busy")
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
        audit.add(s, "sign_in", actor_id=user.user_id, target_user_id=user.user_id, target=user.username,
                  client_address=client, at=now)  # fmt: skip

    dbe.write(engine, tx)
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
