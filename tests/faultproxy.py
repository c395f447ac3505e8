"""A TCP proxy on 127.0.0.1 that injects the faults a real network and a real GCS show: refused
(reset) connections, HTTP 503 answers and stalls, in front of a real server (the GCS emulator).

Faults apply to new connections: ``fail_next(n, mode)`` to the next ``n``, ``fail_always(mode)``
to all until ``heal()``. Open pass-through connections are reset when a fault is set (a dropped
connection mid-transfer), so that pooled keep-alive connections meet the fault too.
Every loop is bounded: stalls end after ``stall_seconds``, and ``close()`` ends everything.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter

MODES = ("refuse", "503", "stall")


class FaultProxy:
    """Proxy ``127.0.0.1:port`` -> ``upstream``; ``served`` counts the faults injected."""

    def __init__(self, upstream_host: str, upstream_port: int, stall_seconds: float = 5.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stall_seconds = stall_seconds
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._queue: list[str] = []
        self._always: str | None = None
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control --------------------------------------------------------------------------------

    def fail_next(self, count: int, mode: str) -> None:
        assert mode in MODES
        with self._lock:
            self._queue += [mode] * count
        self._cut()

    def fail_always(self, mode: str) -> None:
        assert mode in MODES
        with self._lock:
            self._always = mode
        self._cut()

    def heal(self) -> None:
        with self._lock:
            self._queue.clear()
            self._always = None

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._cut()

    # --- the proxy ------------------------------------------------------------------------------

    def _fault(self) -> str | None:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            return self._always

    def _cut(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        fault = self._fault()
        if fault:
            with self._lock:
                self.served[fault] += 1
        if fault == "refuse":
            _reset(client)
        elif fault == "503":
            client.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = client.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                               b"Content-Length: 11\r\nConnection: close\r\n\r\nunavailable")
            except OSError:
                pass
            client.close()
        elif fault == "stall":
            self._closed.wait(self.stall_seconds)  # hold the connection, answer nothing
            client.close()
        else:
            self._pipe(client)

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))

        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=copy, args=(upstream, client), daemon=True).start()
        copy(client, upstream)
        time.sleep(0.05)
        for sock in (client, upstream):
            sock.close()
        with self._lock:
            self._open.difference_update((client, upstream))


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a refused or dropped connection looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
