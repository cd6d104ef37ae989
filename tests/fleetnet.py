"""The fleet lab's network, in a process of its own: every latency proxy and hung socket of one lab,
served by one asyncio loop, so their Python work never competes with the client under test for its
interpreter (a real network is not inside the client).

``tests/fleetlab.py`` runs this file as a script (``python -I -S fleetnet.py PARENT_PID``, the
standard library only) and drives it through its standard input and output, one JSON line each way
per command: ``{"seq": N, "op": ..., "path": ...}`` answered by ``{"seq": N, "ok": true, "result":
...}`` (or ``"ok": false`` with ``"error"``) once the command is applied. A first line with
``"seq": 0`` says the loop is up. The process ends, closing and removing every socket it listens
on, on SIGTERM (the lab's ``close()``, by its PID) or at the end of its standard input; it also asks
the kernel for SIGTERM when its parent dies, so a killed test run leaves no network behind.

Commands, each naming an endpoint by the socket path it listens on: ``listen`` (``kind``: ``proxy``
with ``target`` and ``latency_ms``, or ``hung``), ``silent``, ``silent_on`` (``pattern`` in hex),
``resume``, ``accepted`` (the count of connections so far) and ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

#: ``prctl(PR_SET_PDEATHSIG, …)``: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


class Endpoint:
    """A unix socket the network listens on; subclasses say what a connection gets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted = 0  # connections accepted so far
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def listen(self) -> None:
        """Start listening on the endpoint's path."""
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening and close every connection; the socket file goes."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self.path.unlink(missing_ok=True)


class HungSocket(Endpoint):
    """A host that accepts connections and never answers: what it is sent is read and dropped, and
    a connection stays open until the client closes it (or the network ends)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(65536):
                pass
        writer.close()
        self._writers.discard(writer)


class LatencyProxy(Endpoint):
    """Forwards each connection to ``target`` with a one-way delay of half the round trip on every
    chunk: chunks keep their order, and each waits only its own delay (latency, not a bandwidth cap).
    Silent, it forwards nothing either way and closes nothing; resumed, it delivers what was held."""

    def __init__(self, path: Path, target: Path, latency_ms: float = 0.0) -> None:
        super().__init__(path)
        self.target = target
        self.delay = latency_ms / 2000.0  # seconds, one way
        self.live = asyncio.Event()
        self.live.set()
        self.trigger = b""  # go silent on the first client chunk that holds it (b"": never)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            writer.close()  # the client sees the connection end instead of waiting forever
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))
        except asyncio.CancelledError:
            pass  # the network is closing (asyncio 3.11 would print a cancelled connection task)
        finally:
            for each in pair:
                each.close()
            self._writers -= pair

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool) -> None:
        """Read chunks as they come, each stamped with when it is due; a second task delivers them.
        Chunks from the client are searched for the silence trigger (across chunk boundaries)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver(queue, sink))
        tail = b""
        try:
            while True:
                try:
                    data = await source.read(65536)
                except OSError:
                    data = b""
                if upstream and self.trigger and self.trigger in tail + data:
                    self.trigger = b""
                    self.live.clear()
                tail = (tail + data)[-len(self.trigger) :] if upstream and self.trigger else b""
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter) -> None:
        """Write each chunk when it is due and the proxy is not silent; an empty chunk ends the sink."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            await self.live.wait()
            if not data:
                sink.close()
                return
            sink.write(data)
            try:
                await sink.drain()
            except OSError:
                return


class Network:
    """Every endpoint of one lab, and the commands that create, switch, count and close them."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.commands: dict[str, Callable[..., Awaitable[Any]]] = {
            "listen": self.listen,
            "silent": self.silent,
            "silent_on": self.silent_on,
            "resume": self.resume,
            "accepted": self.accepted,
            "close": self.close,
        }

    async def listen(self, path: str, kind: str, target: str = "", latency_ms: float = 0.0) -> None:
        """A new endpoint on ``path``: a proxy to ``target`` or a hung socket."""
        if path in self.endpoints:
            raise ValueError(f"{path} is already served")
        if kind == "proxy":
            endpoint: Endpoint = LatencyProxy(Path(path), Path(target), latency_ms)
        elif kind == "hung":
            endpoint = HungSocket(Path(path))
        else:
            raise ValueError(f"no endpoint kind {kind!r}")
        await endpoint.listen()
        self.endpoints[path] = endpoint

    def proxy(self, path: str) -> LatencyProxy:
        """The proxy listening on ``path`` (an error for any other endpoint)."""
        endpoint = self.endpoints[path]
        if not isinstance(endpoint, LatencyProxy):
            raise TypeError(f"{path} is not a proxy")
        return endpoint

    async def silent(self, path: str) -> None:
        """Nothing passes either way from now on; connections stay open."""
        self.proxy(path).live.clear()

    async def silent_on(self, path: str, pattern: str) -> None:
        """Go silent, once, as soon as a client sends ``pattern`` (hex)."""
        self.proxy(path).trigger = bytes.fromhex(pattern)

    async def resume(self, path: str) -> None:
        """Forward again, starting with what was held."""
        self.proxy(path).live.set()

    async def accepted(self, path: str) -> int:
        """How many connections the endpoint accepted so far."""
        return self.endpoints[path].accepted

    async def close(self, path: str) -> None:
        """Stop serving ``path``: its connections close and its socket file goes."""
        endpoint = self.endpoints.pop(path, None)
        if endpoint is not None:
            endpoint.close()

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Apply one command and say how it went."""
        seq, op = request.pop("seq"), request.pop("op")
        try:
            return {"seq": seq, "ok": True, "result": await self.commands[op](**request)}
        except Exception as err:
            return {"seq": seq, "ok": False, "error": f"{op}: {type(err).__name__}: {err}"}

    async def serve_commands(self) -> None:
        """Answer each command line of standard input, in order, until it ends."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        reply({"seq": 0, "ok": True, "result": "ready"})
        while line := await reader.readline():
            reply(await self.answer(json.loads(line)))

    async def run(self) -> None:
        """Serve commands until standard input ends or SIGTERM comes, then close every endpoint."""
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        commands = asyncio.create_task(self.serve_commands())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({commands, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for endpoint in self.endpoints.values():
            endpoint.close()
        self.endpoints.clear()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def reply(message: dict[str, Any]) -> None:
    """One answer line on standard output (the parent reads it before it sends the next command)."""
    sys.stdout.buffer.write(json.dumps(message).encode() + b"\n")
    sys.stdout.buffer.flush()


def die_with(parent: int) -> bool:
    """Ask for SIGTERM when the parent dies; False when it is already gone (it died before)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent


def main(argv: list[str]) -> int:
    """``fleetnet.py PARENT_PID``: serve the lab's network while that parent lives."""
    if not die_with(int(argv[0])):
        return 0
    asyncio.run(Network().run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
