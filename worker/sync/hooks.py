"""The Bitbucket webhooks bbsync makes for a connection: register (and repair), list, remove,
rotate the secret, retire rotated-out secrets. worker.engine.hooks judges; this module talks to
Bitbucket and records.

Order of writes, so that nothing is half done unrecorded: a new secret is committed (and so
accepted by the receiver) before any hook is given it; each hook write is followed by its row
(the hook's uuid and the secret it has) and a ledger entry (direction `setup`) in one commit; a
failure is a ledger entry too, naming the repository. A crash between a hook write and its
commit is healed by the next run: the hook is found by its description, and its secret, not
known to be current, is set again.
"""
from __future__ import annotations

import secrets as random
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from config import outbound
from worker import connections, crypto
from worker.bitbucket.errors import BitbucketError, NotFound
from worker.db import ledger
from worker.db.hooks import ConnectionHook
from worker.db.models import Connection, WebhookSecret, utcnow
from worker.db.session import transaction
from worker.engine.hooks import HookState, WantedHook, assess, hook_uuid, wanted
from worker.engine.states import Direction, Outcome
from worker.sync.clients import ClientFactory, client_for

SECRET_BYTES = 32


class HooksError(ValueError):
    """Cannot do it at all (unknown connection, no hooks registered, bad URL)."""


@dataclass
class RepoResult:
    repo: str
    state: HookState | None = None
    actions: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.state is not None and self.state.ok


@dataclass(frozen=True)
class _Plan:
    connection_id: int
    name: str
    repos: tuple[str, ...]
    want: WantedHook | None
    secret_id: int | None
    secret: str | None


def _load(name: str, public_url: str | None = None, *, need_secret: bool = False) -> _Plan:
    """The connection's hooks as they should be; with `public_url`, registered from now on;
    with `need_secret`, its hooks' secret, made and committed first if it has none."""
    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            raise HooksError(f"no connection named {name!r}")
        if public_url is not None:
            conn.hooks_public_url = outbound.check(public_url, "--public-url")
        url = conn.hooks_public_url
        current = _current_secret(conn)
        if need_secret and current is None and url:
            current = _new_secret(session, conn)
        return _Plan(conn.id, conn.name, tuple(r.full_name for r in conn.repos),
                     wanted(conn.name, url) if url else None,
                     current.id if current else None,
                     crypto.decrypt(current.ciphertext) if current and need_secret else None)


def _registered(plan: _Plan) -> _Plan:
    if plan.want is None:
        raise HooksError(f"connection {plan.name!r} has no registered hooks: "
                         f"bbsync hooks register {plan.name} --public-url URL")
    return plan


def _current_secret(conn: Connection) -> WebhookSecret | None:
    mine = [s for s in conn.secrets if s.origin == "hooks" and s.active and s.retire_at is None]
    return max(mine, key=lambda s: s.id, default=None)


def _new_secret(session, conn: Connection) -> WebhookSecret:
    row = WebhookSecret(ciphertext=crypto.encrypt(random.token_urlsafe(SECRET_BYTES)),
                        active=True, origin="hooks")
    conn.secrets.append(row)
    conn.updated_at = utcnow()
    session.flush()
    return row


def _record(plan: _Plan, repo: str, outcome: Outcome, detail: str, *, hook: str | None = None,
            secret_id: int | None = None, forget: bool = False) -> None:
    """One hook write's bookkeeping, in one commit: its row and its ledger entry."""
    with transaction() as session:
        row = session.scalar(select(ConnectionHook).where(
            ConnectionHook.connection_id == plan.connection_id, ConnectionHook.repo == repo))
        if forget and row is not None:
            session.delete(row)
        elif hook is not None:
            if row is None:
                row = ConnectionHook(connection_id=plan.connection_id, repo=repo)
                session.add(row)
            row.hook_uuid = hook
            if secret_id is not None:
                row.secret_id = secret_id
        ledger.record(session, connection_id=plan.connection_id, direction=Direction.SETUP,
                      outcome=outcome, field="hook", detail=f"{repo}: {detail}")


def _recorded(plan: _Plan, repo: str) -> tuple[str | None, int | None]:
    with transaction() as session:
        row = session.scalar(select(ConnectionHook).where(
            ConnectionHook.connection_id == plan.connection_id, ConnectionHook.repo == repo))
        return (row.hook_uuid, row.secret_id) if row else (None, None)


def _assess(client, plan: _Plan, repo: str) -> HookState:
    known, secret_id = _recorded(plan, repo)
    assert plan.want is not None
    return assess(repo, client.iter_hooks(repo), plan.want, known,
                  secret_current=secret_id is not None and secret_id == plan.secret_id)


def _each_repo(plan: _Plan, client, work, *, writes: bool = True) -> list[RepoResult]:
    """work(client, repo, result) for each repository; a Bitbucket failure is the repository's
    error (and, for work that writes, a ledger entry with what was done before it)."""
    results = []
    for repo in plan.repos:
        result = RepoResult(repo)
        try:
            work(client, repo, result)
        except BitbucketError as exc:
            result.error = f"{repo}: {_explain(exc)}"
            if writes:
                done = "; ".join(result.actions) + "; " if result.actions else ""
                _record(plan, repo, Outcome.FAILED, f"{done}failed: {_explain(exc)}")
        results.append(result)
    return results


def _explain(exc: BitbucketError) -> str:
    hint = {401: "the connection's credential was refused (bbsync connection add ... --api-token)",
            403: "the credential may not manage this repository's webhooks (needs admin and the "
                 "webhook scope)",
            404: "no such repository, or the credential cannot see it",
            410: "Bitbucket removed this repository's issue tracker"}.get(exc.status or 0)
    return f"{hint}: {exc}" if hint else str(exc)


def register(name: str, public_url: str | None = None, *,
             client_factory: ClientFactory = client_for) -> list[RepoResult]:
    """Make each repository of `name` have exactly one hook of ours, as wanted. With no
    `public_url`, the one given before (repair)."""
    plan = _registered(_load(name, public_url, need_secret=True))

    def ensure(client, repo: str, result: RepoResult) -> None:
        state = _assess(client, plan, repo)
        if state.hook is None:
            made = client.create_hook(repo, plan.want.url, plan.secret, plan.want.events,
                                      description=plan.want.description)
            _record(plan, repo, Outcome.APPLIED, f"created hook {hook_uuid(made)}",
                    hook=hook_uuid(made), secret_id=plan.secret_id)
            result.actions.append("created")
        elif state.drift:
            uid = hook_uuid(state.hook)
            if state.drift != (f"{len(state.duplicates)} duplicate(s)",):
                client.update_hook(repo, uid, {**plan.want.body(), "secret": plan.secret})
                _record(plan, repo, Outcome.APPLIED, f"repaired hook {uid} ({state.state})",
                        hook=uid, secret_id=plan.secret_id)
                result.actions.append("repaired")
            for dup in state.duplicates:
                _delete(client, repo, hook_uuid(dup))
                _record(plan, repo, Outcome.APPLIED, f"removed duplicate hook {hook_uuid(dup)}", hook=uid)
                result.actions.append("removed duplicate")
        result.state = _assess(client, plan, repo) if result.actions else state

    return _each_repo(plan, client_factory(plan.connection_id), ensure)


def _delete(client, repo: str, uid: str) -> None:
    try:
        client.delete_hook(repo, uid)
    except NotFound:
        pass  # already gone: what we wanted


def inspect(name: str, *, client_factory: ClientFactory = client_for) -> list[RepoResult]:
    """Each repository's hook state, read from Bitbucket; writes nothing."""
    plan = _registered(_load(name))

    def look(client, repo: str, result: RepoResult) -> None:
        result.state = _assess(client, plan, repo)

    return _each_repo(plan, client_factory(plan.connection_id), look, writes=False)


def remove(name: str, *, client_factory: ClientFactory = client_for) -> list[RepoResult]:
    """Delete our hooks from every repository, then forget them and their secrets."""
    plan = _load(name)
    if plan.want is None:
        return []

    def drop(client, repo: str, result: RepoResult) -> None:
        known, _ = _recorded(plan, repo)
        try:
            listed = list(client.iter_hooks(repo))
        except NotFound:  # the repository is gone, and its hooks with it
            listed = []
        for hook in listed:
            if (known and hook_uuid(hook) == known) or hook.get("description") == plan.want.description:
                _delete(client, repo, hook_uuid(hook))
                result.actions.append(f"removed hook {hook_uuid(hook)}")
        _record(plan, repo, Outcome.APPLIED, "; ".join(result.actions) or "no hook to remove", forget=True)

    results = _each_repo(plan, client_factory(plan.connection_id), drop)
    if all(r.error is None for r in results):
        with transaction() as session:
            conn = session.get(Connection, plan.connection_id)
            conn.hooks_public_url = None
            conn.secrets[:] = [s for s in conn.secrets if s.origin != "hooks"]
            conn.updated_at = utcnow()
    return results


def rotate(name: str, overlap: timedelta, *,
           client_factory: ClientFactory = client_for) -> list[RepoResult]:
    """Give every hook a new secret. Secrets no hook has any more are accepted until
    `overlap` has passed, then retired; one that a hook still has (its update failed) is kept."""
    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            raise HooksError(f"no connection named {name!r}")
        if not conn.hooks_public_url:
            raise HooksError(f"connection {name!r} has no registered hooks to rotate")
        _new_secret(session, conn)
    plan = _load(name, need_secret=True)

    def give(client, repo: str, result: RepoResult) -> None:
        known, _ = _recorded(plan, repo)
        if known is None:
            result.error = f"{repo}: no hook recorded (run bbsync hooks repair {name})"
            return
        client.update_hook(repo, known, {"secret": plan.secret})
        _record(plan, repo, Outcome.APPLIED, f"gave hook {known} a new secret", hook=known,
                secret_id=plan.secret_id)
        result.actions.append("new secret")

    results = _each_repo(plan, client_factory(plan.connection_id), give)
    retire_at = utcnow() + overlap
    with transaction() as session:
        still_used = set(session.scalars(select(ConnectionHook.secret_id).where(
            ConnectionHook.connection_id == plan.connection_id)))
        conn = session.get(Connection, plan.connection_id)
        for old in conn.secrets:
            if old.origin == "hooks" and old.id != plan.secret_id and old.id not in still_used \
                    and old.retire_at is None:
                old.retire_at = retire_at
                ledger.record(session, connection_id=conn.id, direction=Direction.SETUP,
                              outcome=Outcome.APPLIED, field="hook",
                              detail=f"a rotated-out webhook secret is accepted until {retire_at.isoformat()}")
        conn.updated_at = utcnow()
    return results


def retire_expired() -> int:
    """Delete the rotated-out secrets whose overlap has ended; each is a ledger entry."""
    now = utcnow()
    with transaction() as session:
        rows = list(session.scalars(select(WebhookSecret).where(
            WebhookSecret.retire_at.is_not(None), WebhookSecret.retire_at <= now)))
        for row in rows:
            ledger.record(session, connection_id=row.connection_id, direction=Direction.SETUP,
                          outcome=Outcome.APPLIED, field="hook",
                          detail=f"retired a rotated-out webhook secret (overlap ended {row.retire_at.isoformat()})")
            session.get(Connection, row.connection_id).updated_at = now
            session.delete(row)
    return len(rows)


def registered() -> list[str]:
    """The connections whose hooks bbsync manages (beat repairs these)."""
    with transaction() as session:
        return list(session.scalars(select(Connection.name).where(
            Connection.hooks_public_url.is_not(None)).order_by(Connection.name)))
