"""Connecting a Bitbucket account with OAuth 2.0 (worker.bitbucket.authorize): the one-time link
`bbsync connection oauth` prints, and the callback Bitbucket sends the person back to.

    GET /oauth/bitbucket/start/<link>   302 to Bitbucket's authorize page; 400 if the link is
                                        unknown, expired or used
    GET /oauth/bitbucket/callback       200 connected; 400 for an unknown, expired or spent
                                        state, a missing code or a refusal; 502 when the token
                                        endpoint fails

Not under /api: no bearer token, the link and the state are the proof. Answers are small HTML
pages of fixed sentences (what little they echo is escaped), never cached, and sent with no
Referer onwards, so a code in the callback's URL goes nowhere else.
"""
from __future__ import annotations

import html
import logging

from flask import Blueprint, Response, current_app, redirect, request

from webhooks.http import sessions
from worker.bitbucket import authorize

log = logging.getLogger("bbsync.webhooks")

bp = Blueprint("oauth", __name__, url_prefix="/oauth/bitbucket")

#: The token endpoint's transport (app.extensions; a test puts the simulator's WSGI transport).
TRANSPORT = "bbsync_oauth_transport"
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'"}
_PAGE = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
         "<body><h1>{title}</h1><p>{text}</p></body></html>")


def _page(status: int, title: str, text: str) -> Response:
    body = _PAGE.format(title=html.escape(title), text=html.escape(text))
    return Response(body, status=status, mimetype="text/html", headers=_HEADERS)


@bp.after_request
def _private(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response


@bp.get("/start/<path:link_id>")
def start(link_id: str):
    try:
        with sessions().begin() as session:
            target = authorize.start(session, link_id)
    except authorize.Refused as exc:
        log.warning("oauth.link_refused reason=%s", exc.reason)
        return _page(400, "Link not valid", str(exc))
    return redirect(target, code=302)


@bp.get("/callback")
def callback():
    args = request.args
    try:
        done = authorize.complete(sessions(), args.get("state"), args.get("code"), args.get("error"),
                                  transport=current_app.extensions.get(TRANSPORT))
    except authorize.Refused as exc:
        log.warning("oauth.callback_refused reason=%s", exc.reason)
        return _page(400, "Not connected", str(exc))
    except authorize.ExchangeFailed as exc:
        log.warning("oauth.exchange_failed error=%s", exc)
        return _page(502, "Not connected", "Bitbucket's token endpoint did not give tokens for this "
                     f"authorization: {exc}. Make a new link with `bbsync connection oauth` and try again.")
    return _page(200, "Connected", f"Connection {done.connection} can now reach Bitbucket as OAuth "
                 f"consumer {done.credential_key.removeprefix('oauth:')}. You may close this page.")
