import pytest

from db import engine as dbe
from db import repo
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
        stored = repo.get_user_by_name(s, "rad1").password_hash
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
