"""The built-in helpdesk makes a ticket with one INSERT: the columns' defaults where the fields
name nothing, the title cut to its column, and nothing else of the session written with it."""
from __future__ import annotations

from sqlalchemy import select

from worker.db.helpdesk import Ticket
from worker.db.models import Connection
from worker.targets.local import TITLE_LIMIT, LocalHelpdesk


def test_a_ticket_gets_its_fields_and_the_defaults_for_the_rest(session):
    desk = LocalHelpdesk(session)
    first = desk.create({"title": "t" * 300, "priority": "urgent", "status": None}, "ana")
    second = desk.create({"title": "", "description": None, "assignee": "bo", "type": "task"}, None)
    made = {t.id: t for t in session.scalars(select(Ticket))}
    a, b = made[int(first)], made[int(second)]
    assert (a.title, a.description, a.status, a.priority, a.type, a.assignee, a.reporter) == \
        ("t" * TITLE_LIMIT, "", "new", "urgent", "problem", None, "ana")
    assert (b.title, b.status, b.priority, b.type, b.assignee, b.reporter) == \
        ("(untitled)", "new", "normal", "task", "bo", None)
    assert a.created_at == a.updated_at and a.created_at.tzinfo is not None
    assert desk.read(first).fields["priority"] == "urgent"


def test_making_a_ticket_writes_nothing_else_of_the_session(session):
    pending = Connection(name="not-yet")
    session.add(pending)
    LocalHelpdesk(session).create({"title": "one"}, None)
    assert pending in session.new  # still to be flushed: the create did not flush the session
