"""The statements every event runs are built once, and on PostgreSQL need nothing rendered into
their SQL text at execution (issue 14): an IN list, expanding or constant, is written into the
text again at every execution, which cost the lock statement more CPU than its round trip. The
text is then the same at every execution, so psycopg prepares it once per connection."""
from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from worker.sync import deliveries, links


@pytest.mark.parametrize("statement", [
    lambda: links._lock_link_statement(False), lambda: links._lock_link_statement(True),
    lambda: deliveries._take_statement("postgresql"), lambda: deliveries._start_statement("postgresql"),
], ids=["lock", "lock-with-comment", "take", "start"])
def test_hot_statements_render_nothing_at_execution_on_postgresql(statement):
    compiled = statement().compile(dialect=postgresql.dialect())
    assert not compiled.post_compile_params and not compiled.literal_execute_params
    assert " IN " not in str(compiled)
    assert statement() is statement()  # built once


def test_sqlite_keeps_an_expanding_in_for_the_ids():
    compiled = deliveries._take_statement("sqlite").compile(dialect=sqlite.dialect())
    assert [p.key for p in compiled.post_compile_params] == ["ids"]
