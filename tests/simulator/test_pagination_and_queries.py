"""Pagination (walked through `next` with httpx2, as the product's client does), BBQL `q`
filters and `sort`."""
from __future__ import annotations

from datetime import datetime

import httpx2
import pytest

from simulator import bbql

from .helpers import API, AUTH, PUBLIC_URL, create_issue


def _issues(api, **params):
    response = api.get("issues", query_string=params)
    assert response.status_code == 200, response.json
    return response.json


def _ids(page: dict) -> list[int]:
    return [v["id"] for v in page["values"]]


def test_next_links_walk_every_page_over_httpx2(api, app):
    for n in range(23):
        create_issue(api, title=f"issue {n}")
    client = httpx2.Client(transport=httpx2.WSGITransport(app=app), headers=AUTH)
    url, seen, pages = f"{PUBLIC_URL}{API}/issues?pagelen=10&sort=id", [], []
    while url:
        body = client.get(url).json()
        pages.append(body)
        seen += [v["id"] for v in body["values"]]
        url = body.get("next")
    assert seen == list(range(1, 24))
    assert [p["page"] for p in pages] == [1, 2, 3]
    assert all(p["size"] == 23 and p["pagelen"] == 10 for p in pages)
    assert pages[0]["next"].startswith(f"{PUBLIC_URL}{API}/issues?")
    assert "previous" not in pages[0] and "next" not in pages[2]
    assert pages[1]["previous"].startswith(PUBLIC_URL)


def test_next_keeps_the_query_and_sort(api):
    for state in ("open", "new", "open", "open"):
        create_issue(api, state=state)
    first = _issues(api, q='state = "open"', sort="-id", pagelen=2)
    assert _ids(first) == [4, 3]
    second = api.get(first["next"]).json
    assert _ids(second) == [1] and "next" not in second


def test_default_pagelen_is_10(api):
    for _ in range(11):
        create_issue(api)
    page = _issues(api)
    assert page["pagelen"] == 10 and len(page["values"]) == 10 and page["next"]


@pytest.mark.parametrize("params", [{"pagelen": 0}, {"pagelen": 101}, {"pagelen": "x"},
                                    {"page": 0}])
def test_bad_paging_parameters_are_400(api, params):
    assert api.get("issues", query_string=params).status_code == 400


def test_a_page_past_the_end_is_404(api):
    create_issue(api)
    assert api.get("issues", query_string={"page": 2}).status_code == 404
    assert _issues(api, page=1)["size"] == 1


def test_empty_collection_is_one_empty_page(api):
    page = _issues(api)
    assert page["values"] == [] and page["size"] == 0 and "next" not in page


def test_state_filter_with_or_and_parentheses(api):
    for state in ("new", "open", "resolved", "closed", "open"):
        create_issue(api, state=state)
    query = '(state = "open" OR state = "new") AND id > 1'
    assert _ids(_issues(api, q=query, sort="id")) == [2, 5]
    assert _ids(_issues(api, q='state != "open"', sort="id")) == [1, 3, 4]


def test_updated_on_filter_compares_datetimes(api):
    create_issue(api)
    create_issue(api)
    api.put("issues/1", json={"state": "open"})           # issue 1 is now the latest
    cut = api.get("issues/2").json["updated_on"]
    assert _ids(_issues(api, q=f"updated_on > {cut}")) == [1]
    assert _ids(_issues(api, q=f'updated_on > "{cut}"')) == [1]
    assert _ids(_issues(api, q=f"updated_on >= {cut}", sort="id")) == [1, 2]
    # Another offset for the same instant, and a bare date.
    shifted = datetime.fromisoformat(cut).astimezone(
        datetime.fromisoformat("2026-01-01T00:00:00+02:00").tzinfo).isoformat()
    assert _ids(_issues(api, q=f"updated_on > {shifted}")) == [1]
    assert len(_issues(api, q="created_on > 2000-01-01")["values"]) == 2


def test_sort_descending_by_updated_on(api):
    for _ in range(3):
        create_issue(api)
    api.put("issues/2", json={"kind": "task"})
    assert _ids(_issues(api, sort="-updated_on")) == [2, 3, 1]
    assert _ids(_issues(api, sort="updated_on")) == [1, 3, 2]
    assert _ids(_issues(api, sort="-id")) == [3, 2, 1]


def test_contains_null_and_nested_fields(api, state):
    ann = state.ensure_user("Ann", nickname="ann")
    create_issue(api, title="Printer on FIRE", assignee={"uuid": ann["uuid"]})
    create_issue(api, title="Coffee", content={"raw": "needs beans"})
    assert _ids(_issues(api, q='title ~ "fire"')) == [1]
    assert _ids(_issues(api, q='content.raw ~ "beans"')) == [2]
    assert _ids(_issues(api, q="assignee = null")) == [2]
    assert _ids(_issues(api, q=f'assignee.uuid = "{ann["uuid"]}"')) == [1]
    reporter = api.get("/2.0/user").json["uuid"]
    assert len(_issues(api, q=f'reporter.uuid = "{reporter}"')["values"]) == 2
    assert _ids(_issues(api, q='priority = "major" and kind = "bug" and id = 2')) == [2]


@pytest.mark.parametrize("query", [
    'state = open',                       # strings must be quoted
    'state = "open" AND',                 # dangling operator
    '(state = "open"',                    # unbalanced parenthesis
    'state "open"',                       # no operator
    'colour = "red"',                     # unknown field
    '= "open"',
    'state = "open" extra',
])
def test_unparsable_query_is_400_with_a_message(api, query):
    response = api.get("issues", query_string={"q": query})
    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("Invalid")


def test_unknown_sort_field_is_400(api):
    assert api.get("issues", query_string={"sort": "-colour"}).status_code == 400


def test_bbql_parses_escapes_and_precedence():
    node = bbql.parse(r'title = "say \"hi\"" OR state = "new" AND id = 3')
    assert isinstance(node, bbql.Combined) and node.op == "or"
    assert node.left == bbql.Comparison("title", "=", 'say "hi"')
    assert bbql.matches(node, {"title": 'say "hi"', "state": "open", "id": 1})
    assert not bbql.matches(node, {"title": "x", "state": "new", "id": 1})
    assert bbql.matches(node, {"title": "x", "state": "new", "id": 3})


def test_bbql_datetime_literal_against_a_non_datetime_field_matches_nothing():
    node = bbql.parse("edited_on = 2026-01-01T00:00:00+00:00")
    assert not bbql.matches(node, {"edited_on": None})
    assert not bbql.matches(node, {"edited_on": "soon"})
