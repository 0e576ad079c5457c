"""An app on a raw asyncio HTTP/1.1 server, for what a framework would not do: it closes the
connection on `GET /dapr/subscribe` when RAW_APP_SUBSCRIBE=close (a transport error), and
answers any other request with what it received, as JSON.

`python -m tests.apps.raw_app` listens on a free loopback port and prints
`raw app listening on 127.0.0.1:PORT` (no port is chosen beforehand, so none can be taken).
"""

from __future__ import annotations

import asyncio
import json
import os


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            verb, target, _ = request_line.split(" ", 2)
            headers = [[part.strip() for part in line.split(":", 1)] for line in lines if line]
            names = {name.lower(): value for name, value in headers}
            size = 0
            if "content-length" in names:
                size = len(await reader.readexactly(int(names["content-length"])))
            elif names.get("transfer-encoding", "").lower() == "chunked":
                while chunk := int((await reader.readline()).split(b";")[0], 16):
                    size += len(await reader.readexactly(chunk))
                    await reader.readline()
                await reader.readline()
            if target == "/dapr/subscribe" and os.environ.get("RAW_APP_SUBSCRIBE") == "close":
                return  # closed without an answer
            body = json.dumps({"verb": verb, "target": target, "headers": headers, "size": size}).encode()
            if target == "/dapr/subscribe":
                body = b"[]"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + b"content-length: %d\r\n\r\n%b" % (len(body), body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"raw app listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
