import datetime as dt

import pytest
from sqlalchemy import select

from db import accounts
from db import engine as dbe
from db.models import Role, SignInSession
from services import auth


def test_first_admin_gets_a_generated_one_time_password_once(ctx):
    password = auth.ensure_first_admin(ctx.engine, None)
    assert password and len(password) >= auth.MIN_PASSWORD_LENGTH
    assert auth.ensure_first_admin(ctx.engine, None) is None  # never a second time
    assert auth.authenticate(ctx.engine, "admin", password).role == "admin"


def test_first_admin_password_from_the_environment(ctx):
    assert auth.ensure_first_admin(ctx.engine, "from-the-env-123") == "from-the-env-123"
    assert auth.authenticate(ctx.engine, "admin", "from-the-env-123") is not None


def test_passwords_are_argon2_hashed_and_wrong_ones_fail(ctx):
    auth.add_user(ctx.engine, "rad1", "radiologist", "correct horse battery")
    with dbe.read(ctx.engine) as s:
        stored = accounts.get_user_by_name(s, "rad1").password_hash
    assert stored.startswith("$argon2id$") and "correct" not in stored
    assert auth.authenticate(ctx.engine, "rad1", "correct horse battery").role == "radiologist"
    assert auth.authenticate(ctx.engine, "rad1", "wrong password!") is None
    assert auth.authenticate(ctx.engine, "nobody", "correct horse battery") is None


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("x", "surgeon", "long-enough-pw", "unknown role"),
        ("bad name", "annotator", "long-enough-pw", "user name"),
        ("ok", "annotator", "short", "at least"),
    ],
)
def test_bad_accounts_are_refused_with_the_reason(ctx, name, role, password, message):
    with pytest.raises(auth.AuthError, match=message):
        auth.add_user(ctx.engine, name, role, password)


def test_duplicate_user_is_refused(ctx):
    auth.add_user(ctx.engine, "ann", "annotator", "long-enough-pw")
    with pytest.raises(auth.AuthError, match="already exists"):
        auth.add_user(ctx.engine, "ann", "researcher", "long-enough-pw")


# --- sign-in sessions (a page reload keeps the reader signed in) ---------------------------------------------
def _stored_tokens(ctx) -> list[str]:
    with dbe.read(ctx.engine) as s:
        return list(s.scalars(select(SignInSession.token_sha256)))


def test_a_session_token_resumes_its_user_until_signed_out(ctx):
    auth.add_user(ctx.engine, "rad2", "radiologist", "long-enough-pw")
    user = auth.authenticate(ctx.engine, "rad2", "long-enough-pw")
    token, expires = auth.start_session(ctx.engine, user)
    assert len(token) >= 40 and token not in _stored_tokens(ctx)  # only its sha256 is kept
    assert auth.resume_session(ctx.engine, token) == (user, expires)  # the stored expiry, not a new one
    left = expires - dt.datetime.now(dt.UTC)
    assert (
        dt.timedelta(hours=auth.SESSION_HOURS) - dt.timedelta(minutes=1)
        < left
        <= dt.timedelta(hours=auth.SESSION_HOURS)
    )
    assert auth.resume_session(ctx.engine, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert auth.resume_session(ctx.engine, None) is None and auth.resume_session(ctx.engine, "") is None
    auth.end_session(ctx.engine, token)
    assert auth.resume_session(ctx.engine, token) is None
    auth.end_session(ctx.engine, token)  # twice is harmless


def test_an_expired_session_or_a_disabled_account_does_not_resume(ctx):
    auth.add_user(ctx.engine, "rad3", "radiologist", "long-enough-pw")
    user = auth.authenticate(ctx.engine, "rad3", "long-enough-pw")
    assert auth.resume_session(ctx.engine, auth.start_session(ctx.engine, user, hours=-0.01)[0]) is None
    token, _ = auth.start_session(ctx.engine, user)

    def change(s, **fields):
        row = accounts.get_user_by_name(s, "rad3")
        for k, v in fields.items():
            setattr(row, k, v)

    dbe.write(ctx.engine, lambda s: change(s, role=Role.researcher))
    assert auth.resume_session(ctx.engine, token)[0].role == "researcher"  # the account's role now
    dbe.write(ctx.engine, lambda s: change(s, is_active=False))
    assert auth.resume_session(ctx.engine, token) is None


def test_a_new_password_ends_the_other_sessions_of_that_user_only(ctx):
    for name in ("rad4", "rad5"):
        auth.add_user(ctx.engine, name, "radiologist", "long-enough-pw")
    rad4 = auth.authenticate(ctx.engine, "rad4", "long-enough-pw")
    rad5 = auth.authenticate(ctx.engine, "rad5", "long-enough-pw")
    here, elsewhere, other_user = (auth.start_session(ctx.engine, u)[0] for u in (rad4, rad4, rad5))
    auth.set_password(ctx.engine, "rad4", "a-new-password-1", keep_session=here)
    assert auth.resume_session(ctx.engine, here)[0] == rad4
    assert auth.resume_session(ctx.engine, elsewhere) is None
    assert auth.resume_session(ctx.engine, other_user)[0] == rad5
    with dbe.read(ctx.engine) as s, pytest.raises(ValueError, match="never every session"):
        accounts.end_sign_in_sessions(s, dt.datetime.now(dt.UTC))


def test_sessions_long_expired_are_deleted_at_the_next_sign_in_and_recent_ones_kept(ctx):
    auth.add_user(ctx.engine, "rad6", "radiologist", "long-enough-pw")
    user = auth.authenticate(ctx.engine, "rad6", "long-enough-pw")
    now = dt.datetime.now(dt.UTC)
    keep = dt.timedelta(days=auth.SESSION_KEEP_DAYS)
    expired = {"old": now - keep - dt.timedelta(hours=1), "recent": now - keep + dt.timedelta(hours=1)}
    for name, when in expired.items():
        dbe.write(ctx.engine, lambda s, n=name, w=when: accounts.add_sign_in_session(s, n, user.user_id, w))
    token, _ = auth.start_session(ctx.engine, user)
    assert sorted(_stored_tokens(ctx)) == sorted(["recent", auth._token_sha256(token)])
