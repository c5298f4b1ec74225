"""Connections: create, update, look up. Secrets are encrypted before they reach a row."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from config import mappings, outbound
from worker import crypto
from worker.bitbucket.budget import BudgetMeter
from worker.bitbucket.credentials import parse_api_token, store_for_connection
from worker.db.credentials import Credential
from worker.db.models import Connection, ConnectionRepo, WebhookSecret, utcnow
from worker.engine.events import SYNCED_FIELDS
from worker.engine.decide import DEFAULT_POLICY, POLICIES
from worker.targets import SIDES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
MAX_SECRET_CHARS = 128  # Bitbucket's own limit on a hook secret


class InvalidConnection(ValueError):
    """Invalid connection settings; the message says which and why."""


@dataclass(frozen=True)
class ConnectionSpec:
    name: str
    repos: tuple[str, ...]
    #: The secrets of hooks made by hand; none keeps what is there (bbsync hooks register
    #: makes its own).
    webhook_secrets: tuple[str, ...] = ()
    target: str = "local"
    api_url: str | None = None
    mapping_override: Mapping[str, Any] | None = None
    policies: Mapping[str, str] | None = None
    api_token: str | None = None  # "EMAIL:TOKEN"; stored encrypted as a credential
    push_internal_notes: bool | None = None


def validate(spec: ConnectionSpec) -> None:
    if not NAME_RE.fullmatch(spec.name):
        raise InvalidConnection(f"connection name {spec.name!r}: use 1-64 lowercase letters, digits, - or _")
    if not spec.repos:
        raise InvalidConnection("a connection needs at least one --repo WORKSPACE/REPO_SLUG")
    for repo in spec.repos:
        if not REPO_RE.fullmatch(repo):
            raise InvalidConnection(f"repository {repo!r} is not WORKSPACE/REPO_SLUG")
    for secret in spec.webhook_secrets:
        if not secret or len(secret) > MAX_SECRET_CHARS or not secret.isprintable():
            raise InvalidConnection(f"a webhook secret must be 1-{MAX_SECRET_CHARS} printable characters")
    if spec.target not in SIDES:
        raise InvalidConnection(f"unknown target {spec.target!r} (known: {', '.join(sorted(SIDES))})")
    if spec.api_url is not None:
        try:
            outbound.check(spec.api_url, "--api-url")
        except outbound.UnsafeUrl as exc:
            raise InvalidConnection(str(exc)) from None
    if spec.api_token is not None:
        try:
            parse_api_token(spec.api_token)
        except ValueError as exc:
            raise InvalidConnection(f"--api-token: {exc}") from None
    try:
        mappings.load(spec.mapping_override)
    except mappings.MappingError as exc:
        raise InvalidConnection(f"mapping: {exc}") from None
    for field, policy in (spec.policies or {}).items():
        if field not in SYNCED_FIELDS:
            raise InvalidConnection(f"policy for {field!r}: not a synced field "
                                    f"(one of {', '.join(SYNCED_FIELDS)})")
        if policy not in POLICIES:
            raise InvalidConnection(f"policy for {field!r} must be one of {', '.join(POLICIES)}")


def get(session: Session, name: str) -> Connection | None:
    if not NAME_RE.fullmatch(name):  # cannot exist; and keeps NULs and junk away from the database
        return None
    return session.scalar(select(Connection).where(Connection.name == name)
                          .options(selectinload(Connection.repos), selectinload(Connection.secrets)))


#: connection id -> (its revision, the row with its repositories, detached): the worker reads a
#: connection for every event, and it changes seldom.
_cache: dict[int, tuple[object, Connection]] = {}


def cached(session: Session, connection_id: int, revision: object) -> Connection:
    """The connection with its repositories, as of `revision` (its `updated_at`, read with the
    delivery): from this process's cache when the revision matches, so that a change made by
    `bbsync connection add` is seen by the next event. Read-only: the row is detached."""
    hit = _cache.get(connection_id)
    if hit is not None and hit[0] == revision:
        return hit[1]
    conn = session.execute(select(Connection).where(Connection.id == connection_id)
                           .options(joinedload(Connection.repos))).unique().scalar_one()
    session.expunge(conn)  # and its repositories (the relationship cascades)
    _cache[connection_id] = (conn.updated_at, conn)
    return conn


def upsert(session: Session, spec: ConnectionSpec) -> tuple[Connection, bool]:
    """Create or update a connection so that it matches the spec exactly. Idempotent."""
    validate(spec)
    conn = get(session, spec.name)
    created = conn is None
    if conn is None:
        conn = Connection(name=spec.name)
        session.add(conn)
    conn.target = spec.target
    if spec.api_url is not None:
        conn.api_url = spec.api_url.rstrip("/")
    if spec.mapping_override is not None:
        conn.mapping_override = dict(spec.mapping_override)
    if spec.policies is not None:
        conn.policies = dict(spec.policies)
    if spec.push_internal_notes is not None:
        conn.push_internal_notes = spec.push_internal_notes
    if spec.api_token is not None:
        store_for_connection(session, conn, parse_api_token(spec.api_token))

    wanted_repos = list(dict.fromkeys(spec.repos))
    conn.repos[:] = [r for r in conn.repos if r.full_name in wanted_repos]
    have = {r.full_name for r in conn.repos}
    conn.repos.extend(ConnectionRepo(full_name=r) for r in wanted_repos if r not in have)

    if spec.webhook_secrets:
        _set_given_secrets(conn, spec.webhook_secrets)
    # A new revision even when only repositories or secrets changed: workers cache the row
    # by it (cached, above).
    conn.updated_at = utcnow()
    session.flush()
    return conn, created


def _set_given_secrets(conn: Connection, secrets: tuple[str, ...]) -> None:
    """The given secrets become the active set of hand-made hooks' secrets: rotate by giving
    old and new, then new alone. The secrets of hooks bbsync made are not touched."""
    wanted = list(dict.fromkeys(secrets))
    kept: list[str] = []
    for row in conn.secrets:
        if row.origin != "given":
            continue
        plain = crypto.decrypt(row.ciphertext)
        row.active = plain in wanted
        if row.active:
            kept.append(plain)
    conn.secrets.extend(WebhookSecret(ciphertext=crypto.encrypt(s), active=True, origin="given")
                        for s in wanted if s not in kept)
    # Inactive secrets are dropped, not kept around: a retired secret has no use.
    conn.secrets[:] = [s for s in conn.secrets if s.active]


def summary(session: Session, conn: Connection) -> dict[str, Any]:
    """What an operator sees of a connection: never a secret."""
    credential = session.get(Credential, conn.credential_id) if conn.credential_id else None
    # The meter reads through this session's own connection: a second connection would wait
    # on the write lock this transaction holds (SQLite).
    meter = BudgetMeter(lambda: Session(bind=session.connection()))
    return {
        "name": conn.name, "target": conn.target, "api_url": conn.api_url,
        "repos": [r.full_name for r in conn.repos],
        "webhook_secrets": sum(1 for s in conn.secrets if s.active),
        "credential": credential.key if credential else None,
        "api_calls_last_hour": meter.used(credential.key) if credential else 0,
        "api_budget_per_hour": meter.limit,
        "push_internal_notes": conn.push_internal_notes,
        "policies": conn.policies or {},
        "tracker_removed_at": conn.tracker_removed_at.isoformat() if conn.tracker_removed_at else None,
        "paused_at": conn.paused_at.isoformat() if conn.paused_at else None,
    }


def details(session: Session, conn: Connection) -> dict[str, Any]:
    """summary(), and what kind of credential it has, which tokens may see it and the hooks
    bbsync made (as recorded; `bbsync hooks list` asks Bitbucket): never a secret."""
    from worker.db.hooks import ConnectionHook
    from worker.db.tokens import ApiToken, ApiTokenConnection
    credential = session.get(Credential, conn.credential_id) if conn.credential_id else None
    scoped = session.scalars(select(ApiToken.name).join(ApiTokenConnection).where(
        ApiTokenConnection.connection_id == conn.id, ApiToken.revoked_at.is_(None)).order_by(ApiToken.name))
    made = session.scalars(select(ConnectionHook).where(ConnectionHook.connection_id == conn.id)
                           .order_by(ConnectionHook.repo))
    live = [s for s in conn.secrets if s.active]
    hooks = {"public_url": conn.hooks_public_url,
             "recorded": [{"repo": h.repo, "hook": h.hook_uuid} for h in made],
             "secrets": {"given": sum(1 for s in live if s.origin == "given"),
                         "generated": sum(1 for s in live if s.origin == "hooks" and not s.retire_at),
                         "retiring": [s.retire_at.isoformat() for s in live if s.retire_at]}}
    return {**summary(session, conn), "credential_kind": credential.kind if credential else None,
            "mapping_override": conn.mapping_override or {}, "created_at": conn.created_at.isoformat(),
            "updated_at": conn.updated_at.isoformat(), "api_tokens": list(scoped), "hooks": hooks}


def set_paused(session: Session, name: str, pause: bool) -> Connection | None:
    """Pause or resume connection `name` (None: no such connection). A new revision, so that
    every worker sees it with its next event."""
    conn = get(session, name)
    if conn is not None:
        conn.paused_at = (conn.paused_at or utcnow()) if pause else None
        conn.updated_at = utcnow()
    return conn


def delete(session: Session, conn: Connection) -> dict[str, int]:
    """Delete a connection and everything of it: its deliveries, links, ledger, outbox,
    conflicts, escalations, hooks' rows (by cascade), its built-in helpdesk tickets and its
    credential. Returns what was counted before."""
    from sqlalchemy import String, cast, delete as delete_rows, func, or_

    from worker.db.helpdesk import Ticket
    from worker.db.models import Delivery, LedgerEntry, Link
    counts = {name: session.scalar(select(func.count()).select_from(model).where(model.connection_id == conn.id))
              for name, model in (("deliveries", Delivery), ("links", Link), ("ledger", LedgerEntry))}
    synced = select(Link.target_id).where(Link.connection_id == conn.id) if conn.target == "local" else None
    theirs = or_(Ticket.connection_id == conn.id, *([cast(Ticket.id, String).in_(synced)] if synced is not None else []))
    counts["tickets"] = session.execute(delete_rows(Ticket).where(theirs)).rowcount
    credential_id = conn.credential_id
    session.delete(conn)
    session.flush()
    if credential_id is not None:
        session.execute(delete_rows(Credential).where(Credential.id == credential_id))
    return counts


def paused(session: Session, *, link_id: int | None = None, escalation_id: int | None = None) -> bool:
    """Whether the connection of a link or an escalation is paused (its work then waits)."""
    from worker.db.models import Escalation, Link
    owner = Link if link_id is not None else Escalation
    return bool(session.scalar(select(Connection.paused_at.is_not(None)).join(
        owner, owner.connection_id == Connection.id).where(owner.id == (link_id or escalation_id))))


def list_all(session: Session) -> list[Connection]:
    return list(session.scalars(select(Connection).order_by(Connection.name)
                                .options(selectinload(Connection.repos), selectinload(Connection.secrets))))


def active_secrets(conn: Connection, now: datetime | None = None) -> list[str]:
    """The secrets a delivery may be signed with now: a rotated-out one until its retire_at."""
    now = now or utcnow()
    return [crypto.decrypt(s.ciphertext) for s in conn.secrets
            if s.active and (s.retire_at is None or s.retire_at > now)]


def secrets_valid_until(conn: Connection) -> datetime | None:
    """When the earliest of the accepted secrets stops being accepted (None: none retires)."""
    return min((s.retire_at for s in conn.secrets if s.active and s.retire_at), default=None)


def tables_for(conn: Connection) -> mappings.MappingTables:
    return mappings.load(conn.mapping_override)


def policy_for(conn: Connection, field: str) -> str:
    return (conn.policies or {}).get(field, DEFAULT_POLICY)

