"""The Flask app: the webhook receiver, the local helpdesk API, the operator pages, the admin's
connections and hooks API and the OAuth connect pages."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from flask import Flask, jsonify
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, get_settings
from webhooks.delivery_store import DeliveryWriter
from webhooks.directory import ConnectionDirectory
from webhooks.dispatch import Dispatcher, one_at_a_time
from worker.db.session import get_engine, make_engine, session_factory

log = logging.getLogger("bbsync.webhooks")


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    #: The receiver's INSERTs, committed in groups (on PostgreSQL autocommit, no ping).
    deliveries: DeliveryWriter
    sessions: sessionmaker[Session]
    directory: ConnectionDirectory
    dispatcher: Dispatcher


def _celery_publish(jobs: Sequence[tuple[str, str | int]]) -> int:
    from worker.queue.publish import publish_many
    return publish_many(jobs)


def _receiver_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return get_engine(url)  # one writer at a time: a second pool would only contend for the lock
    return make_engine(url, pre_ping=False, autocommit=True)


def create_app(settings: Settings | None = None,
               enqueue: Callable[[str, str | int], bool] | None = None) -> Flask:
    """The web app. `enqueue(task, arg)` publishes one job and says whether it worked
    (default: the Celery tasks, published in batches); it runs on a background thread, never on
    the request's."""
    settings = settings or get_settings()
    sessions = session_factory(settings.database_url)
    app = Flask(__name__)
    # Werkzeug enforces this too; the receiver checks first to answer with its own message.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.extensions["bbsync"] = AppState(
        settings, get_engine(settings.database_url), DeliveryWriter(_receiver_engine(settings.database_url)), sessions,
        ConnectionDirectory(sessions), Dispatcher(one_at_a_time(enqueue) if enqueue else _celery_publish))

    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    from webhooks import auth, connections_api, hooks_api, oauth, operator, receiver, tickets
    auth.install(app)
    app.register_blueprint(receiver.bp)
    app.register_blueprint(tickets.bp)
    app.register_blueprint(operator.bp)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(connections_api.bp)
    app.register_blueprint(hooks_api.bp)

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    for code, message in ((404, "not found"), (405, "method not allowed"), (413, "body too large"),
                          (500, "internal error; the request was not applied")):
        app.register_error_handler(code, lambda _e, c=code, m=message: (jsonify({"error": m}), c))
    return app
