"""The Flask app: the webhook receiver, the local helpdesk API and the operator pages."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from flask import Flask, jsonify
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, get_settings
from webhooks.directory import ConnectionDirectory
from webhooks.dispatch import Dispatcher
from worker.db.session import get_engine, session_factory

log = logging.getLogger("bbsync.webhooks")


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    directory: ConnectionDirectory
    dispatcher: Dispatcher


def _celery_enqueue(delivery_id: str) -> bool:
    from worker.tasks import enqueue_delivery
    return enqueue_delivery(delivery_id)


def create_app(settings: Settings | None = None,
               enqueue: Callable[[str], bool] | None = None) -> Flask:
    """The web app. `enqueue` publishes one delivery id and says whether it worked (default:
    the Celery task); it runs on a background thread, never on the request's."""
    settings = settings or get_settings()
    sessions = session_factory(settings.database_url)
    app = Flask(__name__)
    # Werkzeug enforces this too; the receiver checks first to answer with its own message.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.extensions["bbsync"] = AppState(settings, get_engine(settings.database_url), sessions, ConnectionDirectory(sessions),
                                        Dispatcher(enqueue or _celery_enqueue))

    from webhooks import api, receiver
    app.register_blueprint(receiver.bp)
    app.register_blueprint(api.bp)

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    for code, message in ((404, "not found"), (405, "method not allowed"), (413, "body too large")):
        app.register_error_handler(code, lambda _e, c=code, m=message: (jsonify({"error": m}), c))
    return app
