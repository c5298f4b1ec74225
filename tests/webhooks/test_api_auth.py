"""Every `/api/...` endpoint needs a bearer token (webhooks/auth.py, worker/tokens.py): no
token, a malformed, unknown or revoked one gets 401 and changes nothing; a read-only token gets
403 on writes; a connection-scoped token sees its connections only, and another's answers
exactly as something that does not exist."""
from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import func, select, text

from tests.conftest import authorized
from webhooks import auth, create_app
from worker import connections, tokens
from worker.db.models import Conflict, Connection, Delivery, LedgerEntry, Link, utcnow
from worker.db.session import get_engine, transaction
from worker.db.tokens import ApiToken

EXAMPLE_VALUES = {"ticket_id": "1", "delivery_id": "abc123", "action": "replay", "conflict_id": "1",
                  "name": "file.txt"}


def _add_connection(name: str, repo: str) -> int:
    with transaction() as session:
        conn, _ = connections.upsert(session, connections.ConnectionSpec(
            name=name, repos=(repo,), webhook_secrets=("s3cret",)))
        return conn.id


def _app(allowed_failures: int = 10**9):
    """The web app, with a failure meter of its own (the meter is tested on its own below)."""
    app = create_app(enqueue=lambda task, arg: True)
    app.extensions["bbsync_auth"] = auth.FailureMeter(allowed=allowed_failures)
    return app


@pytest.fixture
def app(db):
    return _app()


@pytest.fixture
def tenants(app):
    """Two connections, each with a failed delivery and an open conflict; a client of each."""
    ids = {name: _add_connection(name, f"{name}/repo") for name in ("acme", "globex")}
    with transaction() as session:
        for name, conn_id in ids.items():
            session.add(Delivery(id=f"d{name}", connection_id=conn_id, request_uuid=f"r{name}", event_key="issue:created",
                                 attempt=1, body="{}", status="failed", error="boom", received_at=utcnow()))
            link = Link(connection_id=conn_id, bitbucket_repo=f"{name}/repo", bitbucket_issue_id=1,
                        target_id=f"90{conn_id}")  # (no such ticket)
            session.add(link)
            session.flush()
            entry = LedgerEntry(connection_id=conn_id, direction="forward", outcome="conflict", field="status")
            session.add(entry)
            session.flush()
            session.add(Conflict(connection_id=conn_id, link_id=link.id, field="status", ledger_id=entry.id,
                                 bitbucket_value="resolved", target_value="open"))
    clients = {name: authorized(app.test_client(), f"{name}-token", connection_names=(name,)) for name in ids}
    return ids, clients


def _api_routes(app) -> list[tuple[str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: EXAMPLE_VALUES[m.group(1)], rule.rule)
        routes += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def _row_counts() -> dict[str, int]:
    from worker.db.schema import metadata
    with get_engine().connect() as c:
        return {t.name: c.execute(select(func.count()).select_from(t)).scalar() for t in metadata.sorted_tables}


def test_every_api_endpoint_refuses_a_request_without_a_valid_token(app, tenants):
    routes = _api_routes(app)
    assert len(routes) >= 14  # every ticket and operator endpoint is found
    routes += [("GET", "/api/nosuch"), ("POST", "/api")]  # and paths that lead nowhere
    with transaction() as session:
        revoked = tokens.create(session, "old", admin=True)
        tokens.revoke(session, "old")
    well_formed_unknown = "bbs_" + "A" * 43
    headers = [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", f"Token {well_formed_unknown}",
               "Bearer bbs_short", "Bearer " + "x" * 10_000, f"Bearer {well_formed_unknown}",
               f"Bearer {revoked}", f"Bearer {revoked} extra", "Bearer \x00"]
    before = _row_counts()
    client = app.test_client()
    for method, path in routes:
        for header in headers:
            environ = {} if header is None else {"HTTP_AUTHORIZATION": header}
            r = client.open(path, method=method, json={"status": "closed"}, environ_base=environ)
            assert r.status_code == 401, (method, path, header)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.get_json() == {"error": "a valid API token is required: Authorization: Bearer TOKEN"}
    after = _row_counts()
    assert after == before
    assert client.get("/healthz").status_code == 200  # open


def test_a_read_only_token_reads_and_never_writes(app, tenants):
    ids, _ = tenants
    reader = authorized(app.test_client(), "reader", admin=True, read_only=True)
    assert reader.get("/api/ledger?connection=acme").status_code == 200
    before = _row_counts()
    for method, path in _api_routes(app):
        if method in ("POST", "PATCH", "PUT", "DELETE"):
            r = reader.open(path, method=method, json={"take": "bitbucket"})
            assert r.status_code == 403 and "read-only" in r.get_json()["error"], (method, path)
    assert _row_counts() == before


def test_a_connection_token_sees_its_connection_and_nothing_of_another(app, tenants):
    ids, clients = tenants
    acme, globex = clients["acme"], clients["globex"]
    assert acme.get("/api/ledger?connection=acme").status_code == 200
    for path in ("/api/ledger", "/api/deliveries", "/api/outbox", "/api/conflicts"):
        other = acme.get(f"{path}?connection=globex")
        missing = acme.get(f"{path}?connection=nosuch")
        assert other.status_code == missing.status_code == 404
        assert other.get_json()["error"].replace("globex", "X") == missing.get_json()["error"].replace("nosuch", "X")
    # Another's delivery and conflict answer as ones that do not exist, and stay as they were.
    with transaction() as session:
        globex_conflict = session.scalar(select(Conflict.id).where(Conflict.connection_id == ids["globex"]))
    other = acme.post("/api/deliveries/dglobex/replay")
    missing = acme.post("/api/deliveries/dnosuch/replay")
    assert other.status_code == missing.status_code == 404
    assert other.get_json()["error"].replace("dglobex", "X") == missing.get_json()["error"].replace("dnosuch", "X")
    other = acme.post(f"/api/conflicts/{globex_conflict}/resolve", json={"take": "bitbucket"})
    missing = acme.post("/api/conflicts/999999/resolve", json={"take": "bitbucket"})
    assert other.status_code == missing.status_code == 404
    assert other.get_json()["error"].replace(str(globex_conflict), "X") == missing.get_json()["error"].replace("999999", "X")
    with transaction() as session:
        assert session.get(Delivery, "dglobex").status == "failed"
        assert session.get(Conflict, globex_conflict).state == "open"
    # Its own delivery it may replay.
    assert globex.post("/api/deliveries/dglobex/replay").status_code == 200


def test_a_revoked_token_is_refused_from_the_next_request_and_logged_by_name_only(app, tenants, caplog):
    _, clients = tenants
    acme = clients["acme"]
    token = acme.environ_base["HTTP_AUTHORIZATION"].split()[1]
    assert acme.get("/api/ledger?connection=acme").status_code == 200
    with transaction() as session:
        tokens.revoke(session, "acme-token")
    with caplog.at_level(logging.WARNING, logger="bbsync.auth"):
        assert acme.get("/api/ledger?connection=acme").status_code == 401
    assert "reason=revoked token=acme-token" in caplog.text
    assert token not in caplog.text


def test_tokens_are_stored_as_hashes_and_last_use_is_recorded(app, tenants):
    _, clients = tenants
    token = clients["acme"].environ_base["HTTP_AUTHORIZATION"].split()[1]
    assert clients["acme"].get("/api/ledger?connection=acme").status_code == 200
    with get_engine().connect() as c:
        dump = "\n".join(str(row) for table in ("api_tokens", "api_token_connections")
                         for row in c.execute(text(f"select * from {table}")))
    assert token not in dump and token[4:] not in dump
    with transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "acme-token"))
        assert row.token_hash == tokens.digest(token) and row.last_used_at is not None
        assert tokens.describe(row)["scope"] == ["acme"] and "token" not in tokens.describe(row)


def test_failed_authentications_are_throttled_per_address():
    now = [0.0]
    meter = auth.FailureMeter(allowed=3, window=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert meter.wait("10.0.0.1") == 0
        meter.failed("10.0.0.1")
    assert meter.wait("10.0.0.1") == pytest.approx(60.0)
    assert meter.wait("10.0.0.2") == 0  # another address is not held back
    now[0] = 61.0
    assert meter.wait("10.0.0.1") == 0


def test_the_app_answers_429_with_retry_after_once_an_address_fails_too_often(app, tenants):
    client = _app(allowed_failures=3).test_client()
    answers = [client.get("/api/ledger?connection=acme", headers={"Authorization": "Bearer nope"}).status_code
               for _ in range(5)]
    assert answers == [401, 401, 401, 429, 429]
    r = client.get("/api/ledger?connection=acme")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # A valid token from the same address is not held back (a NAT's other clients).
    good = tenants[1]["acme"].environ_base["HTTP_AUTHORIZATION"]
    assert client.get("/api/ledger?connection=acme", headers={"Authorization": good}).status_code == 200


@pytest.mark.parametrize("name, scope, message", [
    ("", {"admin": True}, "token name"),
    ("a b", {"admin": True}, "token name"),
    ("x" * 65, {"admin": True}, "token name"),
    ("ok", {"admin": False}, "either --admin"),
    ("ok", {"admin": True, "connection_names": ("acme",)}, "either --admin"),
    ("ok", {"admin": False, "connection_names": ("nosuch",)}, "no connection named"),
])
def test_bad_token_requests_are_refused_and_make_nothing(db, name, scope, message):
    _add_connection("acme", "acme/repo")
    with pytest.raises(tokens.TokenError, match=message):
        with transaction() as session:
            tokens.create(session, name, **scope)
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_a_second_token_of_the_same_name_is_refused(db):
    with transaction() as session:
        tokens.create(session, "ops", admin=True)
    with pytest.raises(tokens.TokenError, match="exists already"):
        with transaction() as session:
            tokens.create(session, "ops", admin=True)


def test_behind_a_trusted_proxy_the_forwarded_address_is_throttled(db, monkeypatch):
    from config.settings import get_settings
    monkeypatch.setenv("BBSYNC_TRUSTED_PROXIES", "1")
    get_settings.cache_clear()
    client = _app(allowed_failures=2).test_client()

    def ask(address: str) -> int:
        return client.get("/api/ledger?connection=x", headers={"X-Forwarded-For": address}).status_code
    assert [ask("203.0.113.7") for _ in range(3)] == [401, 401, 429]
    assert ask("198.51.100.9") == 401  # another client behind the same proxy is not held back
    get_settings.cache_clear()


def test_without_a_trusted_proxy_a_forwarded_address_is_ignored(app):
    client = _app(allowed_failures=2).test_client()
    answers = [client.get("/api/ledger?connection=x", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
               for i in range(3)]
    assert answers == [401, 401, 429]  # a client cannot pick a new address per guess


def _same(a, b, a_id, b_id) -> bool:
    """Two refusals are the same answer but for the id or name they repeat."""
    return a.status_code == b.status_code and \
        a.get_json()["error"].replace(str(a_id), "X") == b.get_json()["error"].replace(str(b_id), "X")


def test_tickets_are_seen_only_through_their_connection(app, tenants):
    import io
    from worker.db.helpdesk import Ticket, TicketAttachment, TicketComment
    ids, clients = tenants
    acme, globex = clients["acme"], clients["globex"]
    admin = authorized(app.test_client(), "admin")
    mine = acme.post("/api/tickets", json={"title": "Ours"}).get_json()["id"]
    theirs = globex.post("/api/tickets", json={"title": "Theirs"}).get_json()["id"]
    unowned = admin.post("/api/tickets", json={"title": "Nobody's"}).get_json()["id"]
    owned_by_admin = admin.post("/api/tickets", json={"title": "Acme's", "connection": "acme"}).get_json()["id"]
    assert globex.post(f"/api/tickets/{theirs}/attachments", data={"files": (io.BytesIO(b"x"), "log.txt")},
                       content_type="multipart/form-data").status_code == 201
    with transaction() as session:  # a ticket the sync made: its link says whose it is
        synced = Ticket(title="Synced")
        session.add(synced)
        session.flush()
        synced = synced.id
        session.add(Link(connection_id=ids["acme"], bitbucket_repo="acme/repo", bitbucket_issue_id=7,
                         target_id=str(synced)))
    assert sorted(t["id"] for t in acme.get("/api/tickets").get_json()["tickets"]) == sorted([mine, owned_by_admin, synced])
    assert [t["id"] for t in globex.get("/api/tickets").get_json()["tickets"]] == [theirs]
    assert len(admin.get("/api/tickets").get_json()["tickets"]) == 5
    assert acme.get(f"/api/tickets/{synced}").status_code == 200
    before = _row_counts()
    with transaction() as session:
        title = session.get(Ticket, theirs).title
    for other in (theirs, unowned):
        missing = 999999
        pairs = [
            (acme.get(f"/api/tickets/{other}"), acme.get(f"/api/tickets/{missing}")),
            (acme.patch(f"/api/tickets/{other}", json={"title": "Mine now"}),
             acme.patch(f"/api/tickets/{missing}", json={"title": "Mine now"})),
            (acme.post(f"/api/tickets/{other}/comments", json={"body": "hi"}),
             acme.post(f"/api/tickets/{missing}/comments", json={"body": "hi"})),
            (acme.post(f"/api/tickets/{other}/attachments", data={"files": (io.BytesIO(b"y"), "a.txt")},
                       content_type="multipart/form-data"),
             acme.post(f"/api/tickets/{missing}/attachments", data={"files": (io.BytesIO(b"y"), "a.txt")},
                       content_type="multipart/form-data")),
            (acme.get(f"/api/tickets/{other}/attachments/log.txt"), acme.get(f"/api/tickets/{missing}/attachments/log.txt")),
            (acme.post(f"/api/tickets/{other}/escalate", json={"repo": "acme/repo"}),
             acme.post(f"/api/tickets/{missing}/escalate", json={"repo": "acme/repo"})),
        ]
        for seen, absent in pairs:
            assert seen.status_code == 404 and _same(seen, absent, other, missing), seen.get_json()
    assert _row_counts() == before
    with transaction() as session:
        assert session.get(Ticket, theirs).title == title
    # A ticket goes to Bitbucket only through its own connection, whoever asks.
    into_other = acme.post(f"/api/tickets/{mine}/escalate", json={"repo": "globex/repo"})
    into_nobody = acme.post(f"/api/tickets/{mine}/escalate", json={"repo": "nobody/repo"})
    assert into_other.status_code == 400 and _same(into_other, into_nobody, "globex", "nobody")
    assert admin.post(f"/api/tickets/{mine}/escalate", json={"repo": "globex/repo"}).status_code == 400
    assert _row_counts() == before


def test_a_new_ticket_goes_to_the_tokens_connection_or_the_one_named(app, tenants):
    from worker.db.helpdesk import Ticket
    ids, clients = tenants
    both = authorized(app.test_client(), "both", connection_names=("acme", "globex"))
    r = both.post("/api/tickets", json={"title": "Where?"})
    assert r.status_code == 400 and "connection is required" in r.get_json()["error"]
    made = both.post("/api/tickets", json={"title": "Here", "connection": "globex"}).get_json()["id"]
    acme_only = clients["acme"]
    other = acme_only.post("/api/tickets", json={"title": "There", "connection": "globex"})
    missing = acme_only.post("/api/tickets", json={"title": "There", "connection": "nosuch"})
    assert other.status_code == 404 and _same(other, missing, "globex", "nosuch")
    with transaction() as session:
        assert session.get(Ticket, made).connection_id == ids["globex"]
        assert session.query(Ticket).count() == 1
