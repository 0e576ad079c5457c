"""Programs the tests run beside themselves, on loopback: started, read until they say they
are ready (no polling), and stopped by their PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path


class ChildProcess:
    """One run of `argv` at a time; `start()` again after `stop()` runs it anew."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready: bytes,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.ready = ready
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Future[None] | None = None

    async def start(self) -> int:
        """Run it; return its PID once it has printed the `ready` text."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = self.process.stdout
        assert output is not None
        seen: list[bytes] = []
        while True:
            line = await asyncio.wait_for(output.readline(), 30)
            if not line:
                raise RuntimeError(f"{self.argv[0]} exited:\n" + b"".join(seen).decode(errors="replace"))
            seen.append(line)
            if self.ready in line:
                break
        self._drain = asyncio.ensure_future(self._discard(output))  # a full pipe would block it
        return self.process.pid

    @staticmethod
    async def _discard(output: asyncio.StreamReader) -> None:
        while await output.readline():
            pass

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)  # a paused process would not hear `sig`
            os.kill(self.process.pid, sig)
        await self.process.wait()
        if self._drain is not None:
            await self._drain
        self.process = None
