"""Real HTTP servers on loopback for the tests: uvicorn on a socket bound before it starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger("uvicorn.error")


class _Watched(set[Any]):
    """A set of uvicorn's connections or tasks that says when it empties, so that no one polls it."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._changed.set()

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._changed.set()

    async def emptied(self) -> None:
        while self:
            self._changed.clear()
            await self._changed.wait()


class _Server(uvicorn.Server):
    """uvicorn's server, stopped at once rather than by its polling.

    uvicorn's main loop looks at `should_exit` every 0.1 s, and its shutdown sleeps 0.1 s,
    then looks every 0.1 s for the connections to close: each server took 0.2 s or more to
    stop, most of the time of many tests. This one waits on events; what it does on the way
    out is uvicorn's: stop listening, close each connection once its answer is out, wait for
    the app's tasks (within `timeout_graceful_shutdown`), then the lifespan's shutdown.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        self._forced = asyncio.Event()
        self._connections = self.server_state.connections = _Watched()
        self._tasks = self.server_state.tasks = _Watched()

    def stop(self) -> None:
        self.should_exit = True
        self._exit.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal (Ctrl-C while a test serves) runs its handler between two bytecodes of the
        # loop's thread, perhaps while the loop waits in select: wake it through its self-pipe.
        super().handle_exit(sig, frame)
        self._loop.call_soon_threadsafe(self._exit.set)
        if self.force_exit:  # a second Ctrl-C: stop waiting for the connections and tasks
            self._loop.call_soon_threadsafe(self._forced.set)

    async def main_loop(self) -> None:
        # on_tick(0) refreshes the Date header, as uvicorn does once a second, and says
        # whether to exit.
        while not await self.on_tick(0):
            # asyncio's TimeoutError: the builtin one only from Python 3.11 on.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self._connections):
            connection.shutdown()
        drained = asyncio.ensure_future(self._drained())
        forced = asyncio.ensure_future(self._forced.wait())
        done, _ = await asyncio.wait(
            {drained, forced},
            timeout=self.config.timeout_graceful_shutdown,
            return_when=asyncio.FIRST_COMPLETED,
        )
        drained.cancel()
        forced.cancel()
        await asyncio.gather(drained, forced, return_exceptions=True)
        if not done:
            logger.error("Cancel %s running task(s), timeout graceful shutdown exceeded", len(self._tasks))
            for task in self._tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _drained(self) -> None:
        await self._connections.emptied()
        await self._tasks.emptied()
        for server in self.servers:
            await server.wait_closed()


@contextlib.asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 and a free port; yield its base URL (https with `ssl_certfile`).

    The socket listens before the server starts, so clients can connect at
    once: nothing to poll or sleep for.
    """
    # IPPROTO_TCP named, as getaddrinfo names it for uvicorn's own sockets: asyncio sets
    # TCP_NODELAY only on sockets whose proto says TCP, and a connection accepted with
    # Nagle on waits for the client's delayed ACK (40 ms) after each answer's first write.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"{'https' if config.get('ssl_certfile') else 'http'}://127.0.0.1:{port}"
    finally:
        server.stop()
        await task
        sock.close()
