"""A loopback TCP proxy that forwards, delays or stalls: a slow or hung upstream
for the function's real clients (HTTP to Storage, gRPC to Firestore).

Bounded by construction: it serves only while the test holds it, every socket
has a timeout, and stop() closes everything it accepted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    FORWARD, DELAY, STALL = "forward", "delay", "stall"

    def __init__(self, target_host: str, target_port: int, mode: str = FORWARD, delay: float = 0.0):
        self.target = (target_host, target_port)
        self.mode, self.delay = mode, delay
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._open.append(client)
            if self.mode == self.STALL:
                continue  # accept, read nothing, answer nothing
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        self._open.append(upstream)
        if self.mode == self.DELAY:
            time.sleep(self.delay)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            # Inside the try: the other direction's pipe may have closed this socket already.
            src.settimeout(60)
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
