"""python -m simulator [--host H] [--port P] [--public-url URL]"""
from __future__ import annotations

import argparse

from . import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator",
                                     description="Serve the Bitbucket Cloud simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7990)
    parser.add_argument("--public-url", default=None,
                        help="base URL used in links and next-page URLs "
                             "(default: http://HOST:PORT)")
    args = parser.parse_args(argv)
    print(f"Bitbucket simulator on http://{args.host}:{args.port}/2.0/", flush=True)
    serve(host=args.host, port=args.port, public_url=args.public_url)


if __name__ == "__main__":
    main()
