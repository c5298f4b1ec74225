"""Closed-loop HTTP load for the benchmarks: N keep-alive connections, each sending its next
request as soon as the last is answered. Returns (status, seconds) per request.

Two clients, because on a 2-core machine the client shares the CPU with the server it measures:
- `raw`: asyncio over plain sockets, one event loop per process, each request pre-built but
  for its X-Request-UUID. About 0.1 ms of CPU per request, so what it times is the server.
- `httpx`: httpx2 clients on threads, as an application would send. It costs the machine about
  as much CPU per request as the bare endpoint does, and its threads wait for their own GIL, so
  it inflates latency and flatters throughput ratios (both endpoints wait on the client alike).
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
import uuid
from urllib.parse import urlsplit

CLIENTS = ("raw", "httpx")
Result = tuple[int, float]


def run(client: str, url: str, body: bytes, headers: dict[str, str], seconds: float,
        concurrency: int) -> list[Result]:
    """Every request carries `headers` plus a fresh X-Request-UUID."""
    target, processes = {"raw": (_raw_process, 2), "httpx": (_httpx_process, 4)}[client]
    processes = min(processes, concurrency)
    out: mp.Queue = mp.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    procs = [mp.Process(target=target, args=(url, body, headers, seconds, n, out)) for n in shares]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in out.get()]
    for p in procs:
        p.join()
    return results


def _raw_process(url: str, body: bytes, headers: dict[str, str], seconds: float, connections: int,
                 out: mp.Queue) -> None:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items()), "X-Request-UUID: "]
    head, tail = "\r\n".join(lines).encode("latin-1"), b"\r\n\r\n" + body
    results: list[Result] = []

    async def one_connection(stop_at: float) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.monotonic() < stop_at:
                request = head + str(uuid.uuid4()).encode("ascii") + tail
                started = time.perf_counter()
                writer.write(request)
                status, length, close = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                results.append((status, time.perf_counter() - started))
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        finally:
            writer.close()

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(one_connection(stop_at) for _ in range(connections)))

    asyncio.run(main())
    out.put(results)


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the server will close) from a response's head."""
    status_line, *fields = head.split(b"\r\n")
    length, close = 0, False
    for field in fields:
        name, _, value = field.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    return int(status_line.split(b" ", 2)[1]), length, close


def _httpx_process(url: str, body: bytes, headers: dict[str, str], seconds: float, threads: int,
                   out: mp.Queue) -> None:
    import httpx2
    results: list[Result] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        mine = []
        with httpx2.Client(timeout=30) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                status = client.post(url, content=body,
                                     headers={**headers, "X-Request-UUID": str(uuid.uuid4())}).status_code
                mine.append((status, time.perf_counter() - started))
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put(results)
