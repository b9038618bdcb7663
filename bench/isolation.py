"""(j) One workspace's slow receiver against another workspace's creates.

A receiver that answers each delivery's status at once and then dribbles its
headers a byte a second holds each delivery until its 10 s deadline. While 32
of them (to 32 endpoints, so the per-endpoint cap does not stop them) are in
flight at the deliveries function, another workspace's `POST /v1/uploads` at
concurrency 8 is measured on the API function, and its p99 set against the
same measurement with no such deliveries, round by round. Run by bench/run.py.
"""

from __future__ import annotations

import socket
import statistics
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

DELIVERIES = 32
# The deliveries function's threads as deployed (terraform/variables.tf deliveries_concurrency).
THREADS = 40


class Dribbler:
    """A TCP server that answers any request `200` and then a header byte a second, forever."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/hook"
        self._stop = threading.Event()
        self._open = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def holding(self) -> int:
        """Connections it is dribbling to right now."""
        with self._lock:
            return self._open

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        with self._lock:
            self._open += 1
        try:
            conn.recv(65536)  # the request (its size does not matter here)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self._stop.wait(1.0):
                conn.sendall(b"X")
        except OSError:
            pass  # the delivery gave up at its deadline
        finally:
            conn.close()
            with self._lock:
                self._open -= 1

    def stop(self) -> None:
        self._stop.set()
        self._server.close()


def measure(create: Callable[[], dict], deliver: Callable[[], dict], dribbler: Dribbler, rounds: int) -> dict:
    """p99 of `create()` (a load run on the API) quiet and while `deliver()` (the 32 pushes to the
    deliveries function) holds the dribbler's connections; the median of `rounds` each."""
    quiet, busy = [], []
    for _ in range(rounds):
        quiet.append(create()["p99"])
        with ThreadPoolExecutor(1) as pool:
            pushed = pool.submit(deliver)
            _until(lambda pushed=pushed: dribbler.holding >= DELIVERIES or pushed.done())
            busy.append(create()["p99"])
            held = dribbler.holding
            pushed.result()
    quiet_p99, busy_p99 = statistics.median(quiet), statistics.median(busy)
    return {"quiet_p99": quiet_p99, "busy_p99": busy_p99, "ratio": busy_p99 / quiet_p99, "held": held}


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll between threads (a readiness check: the deliveries reaching the dribbler)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise RuntimeError("the deliveries never reached the dribbling receiver")
