"""The Bitbucket simulator on a real loopback port, in a thread of the test process."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from werkzeug.serving import make_server

from simulator.app import create_app
from simulator.state import SimulatorState


@contextmanager
def serve_simulator() -> Iterator[tuple[SimulatorState, str]]:
    state = SimulatorState()
    server = make_server("127.0.0.1", 0, create_app(state), threaded=True)
    url = f"http://127.0.0.1:{server.port}"
    state.public_url = url
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, url
    finally:
        server.shutdown()
        server.server_close()
        state.close()
