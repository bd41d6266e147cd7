"""A fault-injecting TCP proxy in front of a real server (the chaos tests' teacher link).

Modes: ``pass`` (forward bytes both ways), ``refuse`` (stop listening and cut every open
connection: clients see connection refused / reset), ``delay`` (hold every chunk the
client sends for ``delay_s`` before forwarding it: each request on a keep-alive connection
waits), ``cut`` (forward the server's answer up to the end of its ``cut_events``-th SSE
event, then cut the connection: a stream that breaks mid-answer). It runs its own event
loop in a daemon thread; ``set_mode`` is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["pass", "refuse", "delay", "cut"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultProxy:
    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = _free_port()
        self.upstream_port = upstream_port
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.connections = 0
        self.held = 0  # chunks held by ``delay`` right now: requests on the wire
        self.cut_events = 2
        self.cuts = 0  # answers cut by ``cut``
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set_mode(self, mode: Mode, delay_s: float = 0.0, cut_events: int = 2) -> None:
        self.cut_events = cut_events
        self._call(self._apply(mode, delay_s))

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _apply(self, mode: Mode, delay_s: float) -> None:
        self.mode, self.delay_s = mode, delay_s
        if mode == "refuse":
            await self._close_all()
        elif self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, delayed=True), self._pump(up_reader, writer, delayed=False)
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, delayed: bool) -> None:
        events = 0  # SSE events forwarded on this connection (``cut``)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, RuntimeError):
            while True:
                chunk = await src.read(65536)
                if not chunk:
                    break
                if not delayed and self.mode == "cut":
                    chunk, events, cut = _until_event(chunk, events, self.cut_events)
                    if cut:
                        dst.write(chunk)
                        await dst.drain()
                        self.cuts += 1
                        dst.transport.abort()
                        return
                if delayed and self.mode == "delay":
                    self.held += 1
                    try:
                        await asyncio.sleep(self.delay_s)
                    finally:
                        self.held -= 1
                if self.mode == "refuse":
                    break
                dst.write(chunk)
                await dst.drain()
        if self.mode == "refuse":
            dst.transport.abort()
        else:
            _half_close(dst)


def _until_event(chunk: bytes, seen: int, limit: int) -> tuple[bytes, int, bool]:
    """``chunk`` up to the end of the ``limit``-th SSE event (``seen`` before it), the
    count after it, and whether the limit was reached (the rest is to be cut)."""
    at = 0
    while (start := chunk.find(b"data: ", at)) >= 0:
        end = chunk.find(b"\n\n", start)
        if end < 0:
            break
        seen += 1
        at = end + 2
        if seen >= limit:
            return chunk[:at], seen, True
    return chunk, seen, False


def _half_close(w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        if w.can_write_eof():
            w.write_eof()
