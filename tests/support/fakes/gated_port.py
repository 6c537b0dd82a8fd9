"""A pod's public SSH port: mapped from the start, but refusing connections until sshd runs in the pod.

RunPod maps 22/tcp to a public port when the pod is created; whether anything answers there depends on the
image starting sshd. The gate models that on loopback: a socket bound to its port but not listening refuses
connections (the kernel answers RST), and once the pod's sshd has started (`open_when` sees it) the same port
listens and forwards each connection to the box's real sshd.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable


class GatedPort:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._closed = threading.Event()
        self.opened = threading.Event()

    def open_when(self, ready: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Start listening as soon as `ready()` is true (checked in a background thread)."""

        def watch() -> None:
            while not self._closed.is_set():
                if ready():
                    self.open()
                    return
                self._closed.wait(poll_s)

        threading.Thread(target=watch, name=f"gate-{self.port}", daemon=True).start()

    def open(self) -> None:
        if self.opened.is_set() or self._closed.is_set():
            return
        self._sock.listen(16)
        self.opened.set()
        threading.Thread(target=self._accept, name=f"gate-accept-{self.port}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes, then close both."""
    pairs = {client: upstream, upstream: client}
    try:
        while True:
            readable, _, _ = select.select(list(pairs), [], [], 1.0)
            for source in readable:
                chunk = source.recv(65536)
                if not chunk:
                    return
                pairs[source].sendall(chunk)
    except OSError:
        return
    finally:
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()
