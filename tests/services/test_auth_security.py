"""Password guessing (lockout per user name, slowdown per client), one-time passwords, idle and address-bound
sessions, account administration and its audit, on a real SQLite file."""

import datetime as dt
import json

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DatabaseError

from db import audit
from db import engine as dbe
from db.models import AuditEvent, SignInSession, SignInThrottle
from services import auth

PW = "long-enough-pw"


def _audit(ctx, *actions):
    with dbe.read(ctx.engine) as s:
        return [r for r in reversed(audit.events(s)) if not actions or r.action in actions]


def _fail(ctx, name, n, client=None):
    return [auth.authenticate(ctx.engine, name, "wrong password!", client) for _ in range(n)]


def test_ten_failures_lock_the_account_for_fifteen_minutes_even_for_the_right_password(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    results = _fail(ctx, "rad", auth.LOCKOUT_FAILURES)
    assert results[:-1] == [None] * (auth.LOCKOUT_FAILURES - 1)
    locked = results[-1]
    assert isinstance(locked, auth.Locked)
    left = locked.until - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=14) < left <= dt.timedelta(minutes=15)
    again = auth.authenticate(ctx.engine, "rad", PW)  # the right password does not get in
    assert isinstance(again, auth.Locked) and again.until == locked.until
    assert (
        again.message
        == f"Too many failed attempts; try again after {locked.until.astimezone():%H:%M} ({locked.until.astimezone():%Z})."
    )
    failed = _audit(ctx, "sign_in_failed")
    assert len(failed) == auth.LOCKOUT_FAILURES + 1 and {r.target_user for r in failed} == {"rad"}
    assert [json.loads(r.details)["reason"] for r in failed] == ["wrong_password"] * 10 + ["locked"]
    [lockout] = _audit(ctx, "lockout")
    assert lockout.target_user == "rad" and json.loads(lockout.details)["failures"] == 10
    assert auth.locked_names(ctx.engine) == {"rad": locked.until}


def test_an_unknown_user_name_locks_the_same_way_so_the_answer_tells_nothing(ctx):
    results = _fail(ctx, "nobody", auth.LOCKOUT_FAILURES)
    assert isinstance(results[-1], auth.Locked)
    assert isinstance(auth.authenticate(ctx.engine, "nobody", PW), auth.Locked)
    failed = _audit(ctx, "sign_in_failed")
    # A typed name that is no account may be a mistyped password: the audit keeps only its hash.
    assert all(r.target is None and "nobody" not in r.details for r in failed)
    assert {json.loads(r.details)["name_sha256"] for r in failed} == {
        json.loads(failed[0].details)["name_sha256"]
    }


def test_an_admin_unlocks_and_the_right_password_works_again(ctx):
    auth.add_user(ctx.engine, "boss", "admin", PW)
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    boss = auth.authenticate(ctx.engine, "boss", PW)
    _fail(ctx, "rad", auth.LOCKOUT_FAILURES)
    assert auth.unlock(ctx.engine, "rad", actor=boss) is True
    assert auth.authenticate(ctx.engine, "rad", PW).username == "rad"
    assert auth.unlock(ctx.engine, "rad", actor=boss) is False  # nothing to unlock
    [row] = _audit(ctx, "unlock")
    assert (row.actor, row.target_user) == ("boss", "rad")


def test_failures_older_than_the_window_start_a_new_count_and_a_lockout_ends_by_itself(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    _fail(ctx, "rad", auth.LOCKOUT_FAILURES - 1)
    past = dt.datetime.now(dt.UTC) - auth.LOCKOUT_WINDOW - dt.timedelta(seconds=1)
    dbe.write(ctx.engine, lambda s: s.execute(update(SignInThrottle).values(window_start=past)))
    assert _fail(ctx, "rad", 1) == [None]  # the 10th failure, but the first of a new window
    _fail(ctx, "rad", auth.LOCKOUT_FAILURES - 1)
    dbe.write(
        ctx.engine, lambda s: s.execute(update(SignInThrottle).values(locked_until=dt.datetime.now(dt.UTC)))
    )
    assert auth.authenticate(ctx.engine, "rad", PW).username == "rad"


def test_a_successful_sign_in_forgets_the_failures(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    _fail(ctx, "rad", auth.LOCKOUT_FAILURES - 1)
    auth.start_session(ctx.engine, auth.authenticate(ctx.engine, "rad", PW))
    assert _fail(ctx, "rad", auth.LOCKOUT_FAILURES - 1) == [None] * (auth.LOCKOUT_FAILURES - 1)
    [signed_in] = _audit(ctx, "sign_in")
    assert signed_in.actor == "rad"


def test_one_client_failing_over_many_names_is_slowed_down_and_others_are_not(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    for k in range(auth.CLIENT_FREE_FAILURES):
        assert auth.authenticate(ctx.engine, f"guess{k}", "wrong password!", "10.0.0.9") is None
    slowed = auth.authenticate(ctx.engine, "rad", PW, "10.0.0.9")  # not even checked
    assert isinstance(slowed, auth.SlowDown) and 0 < slowed.wait_s <= 1.0
    assert "wait 1 s" in slowed.message
    assert auth.authenticate(ctx.engine, "rad", PW, "10.0.0.10").username == "rad"  # another client
    assert auth.authenticate(ctx.engine, "rad", PW, None).username == "rad"  # the command line
    # A client that tries again as soon as it may: the gaps double after the free attempts, up to the cap.
    throttle, t, allowed_at = auth._ClientThrottle(), 0.0, []
    while len(allowed_at) < auth.CLIENT_FREE_FAILURES + 8:
        wait = throttle.attempt("c", now=t)
        if wait == 0:
            allowed_at.append(t)
        t += wait
    gaps = [b - a for a, b in zip(allowed_at, allowed_at[1:], strict=False)]
    assert gaps == [0.0] * (auth.CLIENT_FREE_FAILURES - 1) + [1, 2, 4, 8, 16, 32, 60, 60]
    throttle.forget("c")  # a success
    assert throttle.attempt("c", now=t) == 0


def test_browsers_behind_one_local_address_are_slowed_per_typed_name(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    for _ in range(auth.CLIENT_FREE_FAILURES):
        auth.authenticate(ctx.engine, "guessed", "wrong password!", "local")
    assert isinstance(auth.authenticate(ctx.engine, "guessed", "wrong password!", "local"), auth.SlowDown)
    assert auth.authenticate(ctx.engine, "rad", PW, "local").username == "rad"  # not everybody waits


def test_parallel_guesses_get_no_more_tries_than_serial_ones(ctx):
    import threading

    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    start, results = threading.Barrier(24), []

    def guess(k):
        start.wait()
        results.append(auth.authenticate(ctx.engine, "rad", f"wrong password {k}"))

    threads = [threading.Thread(target=guess, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checked = [r for r in _audit(ctx, "sign_in_failed") if json.loads(r.details)["reason"] == "wrong_password"]
    assert len(checked) == auth.LOCKOUT_FAILURES  # the other 14 were refused before their password was checked
    assert sum(isinstance(r, auth.Locked) for r in results) >= 24 - auth.LOCKOUT_FAILURES
    assert len(_audit(ctx, "lockout")) == 1
    assert isinstance(auth.authenticate(ctx.engine, "rad", PW), auth.Locked)


def test_changing_ones_own_password_asks_for_the_current_one_counted_like_a_sign_in(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    with pytest.raises(auth.AuthError, match="the current password is wrong"):
        auth.set_password(ctx.engine, "rad", "taken-over-pw", current="a wrong guess")
    assert auth.authenticate(ctx.engine, "rad", PW).username == "rad"
    for _ in range(auth.LOCKOUT_FAILURES):
        auth.authenticate(ctx.engine, "rad", "a wrong guess")
    with pytest.raises(auth.AuthError, match="Too many failed attempts"):
        auth.set_password(ctx.engine, "rad", "taken-over-pw", current=PW)
    auth.unlock(ctx.engine, "rad")
    auth.set_password(ctx.engine, "rad", "my-new-password", current=PW)
    assert auth.authenticate(ctx.engine, "rad", "my-new-password").username == "rad"
    [changed] = _audit(ctx, "password_changed")
    assert (changed.actor, changed.target_user) == ("rad", "rad")


def test_the_throttle_keeps_no_typed_name_and_forgets_old_counts(ctx):
    from sqlalchemy import func

    _fail(ctx, "my-secret-password-typed-as-a-name", 1)
    with dbe.read(ctx.engine) as s:
        keys = list(s.scalars(select(SignInThrottle.name_sha256)))
    assert keys == [auth._name_key("my-secret-password-typed-as-a-name")]
    past = dt.datetime.now(dt.UTC) - auth.LOCKOUT_WINDOW - dt.timedelta(minutes=1)
    dbe.write(ctx.engine, lambda s: s.execute(update(SignInThrottle).values(window_start=past)))
    _fail(ctx, "someone-else", 1)  # any attempt prunes what has expired
    with dbe.read(ctx.engine) as s:
        assert s.scalar(select(func.count()).select_from(SignInThrottle)) == 1


def test_a_generated_password_is_one_time_and_must_be_changed_to_another(ctx):
    password = auth.add_user(ctx.engine, "ann", "annotator")
    user = auth.authenticate(ctx.engine, "ann", password)
    assert user.must_change_password
    with pytest.raises(auth.AuthError, match="other than the one-time password"):
        auth.set_password(ctx.engine, "ann", password)
    auth.set_password(ctx.engine, "ann", "my-own-password")
    assert auth.authenticate(ctx.engine, "ann", "my-own-password").must_change_password is False
    assert auth.add_user(ctx.engine, "res", "researcher", PW) == PW
    assert auth.authenticate(ctx.engine, "res", PW).must_change_password is False  # chosen, not generated


def test_admin_account_changes_apply_at_once_and_are_audited(ctx):
    auth.add_user(ctx.engine, "boss", "admin", PW)
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    boss = auth.authenticate(ctx.engine, "boss", PW)
    rad = auth.authenticate(ctx.engine, "rad", PW)
    token, _ = auth.start_session(ctx.engine, rad)

    auth.set_role(ctx.engine, "rad", "researcher", actor=boss)
    assert auth.resume_session(ctx.engine, token)[0].role == "researcher"
    auth.set_active(ctx.engine, "rad", False, actor=boss)
    assert auth.resume_session(ctx.engine, token) is None and auth.authenticate(ctx.engine, "rad", PW) is None
    auth.set_active(ctx.engine, "rad", True, actor=boss)
    new = auth.reset_password(ctx.engine, "rad", actor=boss)
    assert auth.authenticate(ctx.engine, "rad", PW) is None
    assert auth.authenticate(ctx.engine, "rad", new).must_change_password

    rows = [
        (r.action, r.actor, r.target_user)
        for r in _audit(ctx, "role_changed", "user_disabled", "user_enabled", "password_reset")
    ]
    assert rows == [
        ("role_changed", "boss", "rad"), ("user_disabled", "boss", "rad"), ("user_enabled", "boss", "rad"),
        ("password_reset", "boss", "rad"),
    ]  # fmt: skip
    assert json.loads(_audit(ctx, "role_changed")[0].details) == {"from": "radiologist", "to": "researcher"}
    assert new not in json.dumps([r.details for r in _audit(ctx)])  # no credential in the audit


def test_the_last_active_admin_cannot_be_disabled_or_demoted(ctx):
    auth.add_user(ctx.engine, "boss", "admin", PW)
    for change in (
        lambda: auth.set_active(ctx.engine, "boss", False),
        lambda: auth.set_role(ctx.engine, "boss", "researcher"),
    ):
        with pytest.raises(auth.AuthError, match="last active admin"):
            change()
    auth.add_user(ctx.engine, "boss2", "admin", PW)
    auth.set_role(ctx.engine, "boss", "researcher")  # another admin remains
    with pytest.raises(auth.AuthError, match="last active admin"):
        auth.set_active(ctx.engine, "boss2", False)
    with pytest.raises(auth.AuthError, match="does not exist"):
        auth.set_role(ctx.engine, "boss3", "admin")


def test_a_session_ends_after_thirty_idle_minutes_and_activity_keeps_it(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    token, _ = auth.start_session(ctx.engine, auth.authenticate(ctx.engine, "rad", PW))

    def seen(minutes_ago):
        when = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)
        dbe.write(ctx.engine, lambda s: s.execute(update(SignInSession).values(last_seen_at=when)))

    seen(auth.IDLE_MINUTES - 1)
    assert auth.resume_session(ctx.engine, token) is not None  # and this action counts as activity
    with dbe.read(ctx.engine) as s:
        last = s.scalar(select(SignInSession.last_seen_at))
    assert dt.datetime.now(dt.UTC) - last < dt.timedelta(seconds=5)
    seen(auth.IDLE_MINUTES + 1)
    assert auth.resume_session(ctx.engine, token) is None


def test_a_session_cookie_replayed_from_another_address_does_not_resume(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    token, _ = auth.start_session(ctx.engine, auth.authenticate(ctx.engine, "rad", PW), client="10.1.1.1")
    assert auth.resume_session(ctx.engine, token, "10.1.1.1") is not None
    assert auth.resume_session(ctx.engine, token, "10.6.6.6") is None


def test_sign_in_and_sign_out_are_audited_with_the_address(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    token, _ = auth.start_session(ctx.engine, auth.authenticate(ctx.engine, "rad", PW), client="10.1.1.1")
    auth.end_session(ctx.engine, token, "10.1.1.1")
    auth.end_session(ctx.engine, token, "10.1.1.1")  # a second sign-out of the same session adds nothing
    assert [(r.action, r.actor, r.client_address) for r in _audit(ctx, "sign_in", "sign_out")] == [
        ("sign_in", "rad", "10.1.1.1"), ("sign_out", "rad", "10.1.1.1"),
    ]  # fmt: skip


def test_the_audit_is_append_only_in_the_database(ctx):
    auth.add_user(ctx.engine, "rad", "radiologist", PW)
    with pytest.raises(DatabaseError, match="append-only"):
        dbe.write(ctx.engine, lambda s: s.execute(update(AuditEvent).values(action="sign_in")))
    with pytest.raises(DatabaseError, match="append-only"):
        dbe.write(ctx.engine, lambda s: s.execute(text("DELETE FROM audit_events")))
    with dbe.read(
        ctx.engine
    ) as s:  # the other audit tables too (empty here: row triggers have nothing to refuse)
        triggers = set(s.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")))
    assert triggers == {
        f"{t}_no_{v}"
        for t in ("audit_events", "verdict_events", "active_model_events", "annotation_versions", "report_versions",
                  "threshold_set_activations")
        for v in ("update", "delete")
    }
    assert [r.action for r in _audit(ctx)] == ["user_added"]
