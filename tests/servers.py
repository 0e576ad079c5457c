"""Real HTTP servers on loopback for the tests: uvicorn on a socket bound before it starts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serve(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 and a free port; yield its base URL (https with `ssl_certfile`).

    The socket listens before the server starts, so clients can connect at
    once: nothing to poll or sleep for.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, **config)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"{'https' if config.get('ssl_certfile') else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
