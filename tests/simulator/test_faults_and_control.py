"""Failure injection (in Python and over /_sim), tracker removal, and the control API."""
from __future__ import annotations

import pytest

from .helpers import API, Api, basic, create_issue


def test_injected_429_is_plain_text_without_retry_after(api, state):
    state.faults.add(status=429, times=2)
    for _ in range(2):
        response = api.get("issues")
        assert response.status_code == 429
        assert response.mimetype == "text/plain"
        assert response.data == b"Rate limit for this resource has been exceeded"
        assert "Retry-After" not in response.headers
    assert api.get("issues").status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503])
def test_injected_5xx_is_an_error_envelope(api, state, status):
    state.faults.add(status=status)
    response = api.get("issues")
    assert response.status_code == status
    assert response.json["type"] == "error" and response.json["error"]["message"]


def test_faults_match_method_and_path_and_change_nothing(api, state):
    create_issue(api)
    state.faults.add(status=503, method="PUT", path=r"/issues/\d+$")
    assert api.get("issues/1").status_code == 200
    assert api.post("issues/1/comments", json={"content": {"raw": "x"}}).status_code == 201
    assert api.put("issues/1", json={"state": "open"}).status_code == 503
    assert api.get("issues/1").json["state"] == "new"          # the failed write did nothing
    assert api.put("issues/1", json={"state": "open"}).status_code == 200


def test_faults_are_logged_and_consumed_in_order(api, state):
    state.faults.add(status=500, times=1)
    state.faults.add(status=429, times=1)
    assert [api.get("issues").status_code for _ in range(3)] == [500, 429, 200]
    assert [entry.status for entry in state.request_log[-3:]] == [500, 429, 200]
    assert state.faults.pending() == {"faults": [], "slow": [], "drop_webhooks": 0}


def test_faults_do_not_touch_the_control_api_or_token_endpoint(app, state):
    state.faults.add(status=500, times=5)
    client = app.test_client()
    assert client.get("/_sim/requests").status_code == 200
    token = client.post("/site/oauth2/access_token", data={
        "grant_type": "client_credentials", "client_id": "c", "client_secret": "s"})
    assert token.status_code == 200


def test_invalid_faults_are_refused(state, app):
    with pytest.raises(ValueError):
        state.faults.add(status=418)
    with pytest.raises(ValueError):
        state.faults.add(status=500, times=0)
    client = app.test_client()
    assert client.post("/_sim/faults", json={"status": 200}).status_code == 400
    assert client.post("/_sim/faults", json={"status": 500, "path": "("}).status_code == 400
    assert client.post("/_sim/faults", json=[1]).status_code == 400


def test_faults_over_http(api, app, state):
    client = app.test_client()
    added = client.post("/_sim/faults", json={"status": 502, "times": 2, "method": "get"})
    assert added.status_code == 201
    assert added.json["faults"] == [{"status": 502, "times": 2, "method": "GET", "path": None}]
    assert api.post("issues", json={"title": "x"}).status_code == 201
    assert api.get("issues").status_code == 502
    assert client.delete("/_sim/faults").status_code == 204
    assert api.get("issues").status_code == 200
    assert client.post("/_sim/faults", json={"drop_webhooks": 3}).json["drop_webhooks"] == 3


def test_removed_tracker_answers_410_on_every_issue_endpoint(api, app, state):
    create_issue(api)
    response = app.test_client().post("/_sim/tracker-removed", json={"repo": "acme/widgets"})
    assert response.status_code == 200
    for method, path in [("get", "issues"), ("post", "issues"), ("get", "issues/1"),
                         ("put", "issues/1"), ("get", "issues/1/comments"),
                         ("post", "issues/1/changes"), ("get", "issues/1/attachments")]:
        answer = getattr(api, method)(path, json={"title": "x"} if method != "get" else None)
        assert answer.status_code == 410, path
        assert answer.json["type"] == "error"
        assert "removed" in answer.json["error"]["message"].lower()
    assert api.get("hooks").status_code == 200                 # webhooks are unaffected
    assert api.get(API).status_code == 200


def test_tracker_removal_in_python_and_410_fault(api, state):
    state.faults.add(status=410)
    assert api.get("issues").json["error"]["detail"].startswith("Bitbucket Cloud issues")
    assert api.get("issues").status_code == 200
    state.remove_tracker("acme/widgets")
    assert api.get("issues").status_code == 410


def test_tracker_removed_needs_a_repo(app):
    assert app.test_client().post("/_sim/tracker-removed", json={}).status_code == 400


def test_request_log_over_http(api, app):
    api.get("issues")
    api.get("issues", headers={"Authorization": ""})
    body = app.test_client().get("/_sim/requests").json
    assert body["count"] == 3
    assert body["by_status"] == {"200": 2, "401": 1}
    assert body["requests"][-1] == {"method": "GET", "path": f"{API}/issues", "status": 401}
    assert app.test_client().delete("/_sim/requests").status_code == 204
    assert app.test_client().get("/_sim/requests").json["count"] == 0


def test_deliveries_and_events_over_http(api, hook, app):
    create_issue(api)
    body = app.test_client().get("/_sim/deliveries?wait=5").json
    assert body["idle"] is True
    [delivery] = body["deliveries"]
    assert delivery["event_key"] == "issue:created" and delivery["status"] == 200
    assert delivery["hook_uuid"] == hook["uuid"].strip("{}")
    events = app.test_client().get("/_sim/events").json["events"]
    assert events[0]["payload"]["issue"]["id"] == 1


def test_reset_forgets_everything(api, app, state):
    create_issue(api)
    state.faults.add(status=500, times=9)
    assert app.test_client().post("/_sim/reset").status_code == 204
    assert state.faults.pending()["faults"] == []
    assert api.get(API).status_code == 404
    assert state.request_log == [("GET", API, 404)]


def test_settings_change_the_token_ttl(app, state):
    client = app.test_client()
    assert client.post("/_sim/settings", json={"token_ttl": 5}).json["token_ttl"] == 5
    assert state.token_ttl == 5
    assert client.post("/_sim/settings", json={"token_ttl": -1}).status_code == 400


def test_optional_rate_limit_counts_per_credential(api, app, state):
    settings = app.test_client().post("/_sim/settings", json={"rate_limit_per_hour": 3})
    assert settings.json["rate_limit_per_hour"] == 3
    assert [api.get("issues").status_code for _ in range(4)] == [200, 200, 200, 429]
    limited = api.get("issues")
    assert limited.mimetype == "text/plain" and "Retry-After" not in limited.headers
    assert Api(app, basic("other@example.com", "t")).get(f"{API}/issues").status_code == 200
    assert api.get("/2.0/user").status_code == 200          # only /2.0/repositories/* counts
    state.rate_limit_per_hour = None
    assert api.get("issues").status_code == 200
    assert app.test_client().post("/_sim/settings",
                                  json={"rate_limit_per_hour": 0}).status_code == 400


def test_a_slow_answer_takes_effect_after_its_delay(api, app, state):
    import threading
    import time
    create_issue(api)
    state.faults.slow(0.4, times=1, method="POST", path=r"/comments$")
    posted = []
    started = time.monotonic()
    writer = threading.Thread(target=lambda: posted.append(
        api.post("issues/1/comments", json={"content": {"raw": "late"}})))
    writer.start()
    time.sleep(0.2)
    # Halfway through the delay the comment does not exist yet, as with a request on its way.
    assert api.get("issues/1/comments").json["size"] == 0
    writer.join(5)
    assert posted[0].status_code == 201 and time.monotonic() - started >= 0.4
    assert api.get("issues/1/comments").json["size"] == 1
    # Consumed: the next POST is served at once.
    quick = time.monotonic()
    assert api.post("issues/1/comments", json={"content": {"raw": "quick"}}).status_code == 201
    assert time.monotonic() - quick < 0.4


def test_slow_answers_over_http_and_their_limits(app, state):
    client = app.test_client()
    added = client.post("/_sim/faults", json={"delay": 0.25, "times": 3, "method": "post", "path": "/comments"})
    assert added.status_code == 201
    assert added.json["slow"] == [{"delay": 0.25, "status": 0, "times": 3, "method": "POST", "path": "/comments"}]
    for bad in ({"delay": 0}, {"delay": -1}, {"delay": 60}, {"delay": "soon"}, {"delay": 1, "times": 0},
                {"delay": 1, "path": "("}):
        assert client.post("/_sim/faults", json=bad).status_code == 400, bad
    assert len(client.get("/_sim/faults").json["slow"]) == 1  # the refused ones added nothing
    assert client.delete("/_sim/faults").status_code == 204
    assert client.get("/_sim/faults").json["slow"] == []
