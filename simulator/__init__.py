"""A stateful fake of Bitbucket Cloud: the issue REST API 2.0, the OAuth token endpoint and
webhook delivery, with failure injection. Part of the product: the demo runs against it, and
so can anyone building an integration without a Bitbucket account.

    from simulator.app import create_app
    from simulator.state import SimulatorState
"""
from __future__ import annotations


def serve(host: str = "127.0.0.1", port: int = 7990, public_url: str | None = None) -> None:
    """Serve the simulator with werkzeug's threaded server until interrupted (blocking)."""
    from werkzeug.serving import make_server

    from .app import create_app
    from .state import SimulatorState

    state = SimulatorState()
    server = make_server(host, port, create_app(state), threaded=True)
    if public_url is None:
        # A wildcard bind is not an address a client can use in links.
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        public_url = f"http://{shown}:{server.port}"
    state.public_url = public_url.rstrip("/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        state.close()
