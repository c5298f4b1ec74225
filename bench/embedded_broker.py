"""The embedded broker's cost: worker.queue.embedded_broker against kombu's own filesystem
transport.

    .venv/bin/python bench/embedded_broker.py [--messages 2000] [--rounds 5] [--bytes 1500]

Each round puts --messages task-sized payloads on a queue and takes them off again, once per
transport, the two alternating (this machine is shared and noisy: only the ratio, measured in
the same run, means anything). Ours pays for its repair (a staging file, a rename in, a rename
to its own folder instead of a copy to the system's temp folder); this says how much.
Then a race: a writer and a reader thread at once, counting what the reader could not decode
(a message lost) on each transport.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kombu import Connection  # noqa: E402
from kombu.transport import filesystem  # noqa: E402
from kombu.transport.virtual import Empty  # noqa: E402

from worker.queue import embedded_broker  # noqa: E402

TRANSPORTS = {"kombu": filesystem.Transport, "bbsync": embedded_broker.Transport}
QUEUE = "bench"


def channel(transport, root: Path):
    folders = {name: root / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    conn = Connection("filesystem://", transport=transport, transport_options={
        "data_folder_in": str(folders["queue"]), "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]), "control_folder": str(folders["control"])})
    return conn, conn.default_channel


def put_then_get(transport, root: Path, messages: int, payload: dict) -> tuple[float, float]:
    """Seconds per message to put, then to get, `messages` messages."""
    conn, ch = channel(transport, root)
    with conn:
        started = time.perf_counter()
        for n in range(messages):
            ch._put(QUEUE, dict(payload, n=n))
        put = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(messages):
            ch._get(QUEUE)
        get = time.perf_counter() - started
    return put / messages, get / messages


def race(transport, root: Path, messages: int, payload: dict) -> tuple[int, int]:
    """(received, undecodable) with a writer and a reader running at once."""
    conn, ch = channel(transport, root)
    got, bad, done = [0], [0], threading.Event()

    def read():
        while not done.is_set() or ch._size(QUEUE):
            try:
                ch._get(QUEUE)
                got[0] += 1
            except Empty:
                continue
            except ValueError:
                bad[0] += 1

    with conn:
        reader = threading.Thread(target=read)
        reader.start()
        for n in range(messages):
            ch._put(QUEUE, dict(payload, n=n))
        done.set()
        reader.join()
    return got[0], bad[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bytes", type=int, default=1500, help="payload size (a Celery task message is ~1.5 KB)")
    args = parser.parse_args()
    payload = {"body": "x" * args.bytes}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in TRANSPORTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(TRANSPORTS) if r % 2 == 0 else list(reversed(TRANSPORTS))
            for name in order:
                times[name].append(put_then_get(TRANSPORTS[name], Path(tmp) / f"{name}-{r}",
                                                args.messages, payload))
        print(f"{args.messages} messages of {args.bytes} bytes, {args.rounds} rounds (median):")
        med = {name: (statistics.median(p for p, _ in t), statistics.median(g for _, g in t))
               for name, t in times.items()}
        for name, (put, get) in med.items():
            print(f"  {name:7s} put {put * 1e6:7.1f} us/msg   get {get * 1e6:7.1f} us/msg")
        k, b = med["kombu"], med["bbsync"]
        print(f"  ratio bbsync/kombu: put {b[0] / k[0]:.2f}, get {b[1] / k[1]:.2f}, "
              f"both {(b[0] + b[1]) / (k[0] + k[1]):.2f}")
        print("race, a writer and a reader at once (20 KB payloads):")
        for name, transport in TRANSPORTS.items():
            got, bad = race(transport, Path(tmp) / f"race-{name}", args.messages,
                            {"body": "x" * 20_000})
            print(f"  {name:7s} sent {args.messages}, received {got}, undecodable (lost) {bad}")


if __name__ == "__main__":
    main()
