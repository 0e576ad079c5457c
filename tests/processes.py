"""Programs the tests run beside themselves, on loopback: started, read until they say they
are ready (no polling), and stopped by their PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path


class Faults:
    """The faults a test makes a server it runs go through, by signals to its PID."""

    async def start(self) -> int:
        raise NotImplementedError

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        raise NotImplementedError

    def send_signal(self, sig: int) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        """Stopped where it is (SIGSTOP): its connections stay open and nothing answers."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        """Stopped gracefully (SIGTERM) and started again, on its port and its data."""
        await self.stop()
        await self.start()

    async def crash(self) -> None:
        """Killed (SIGKILL), then started again: what it had not stored is gone."""
        await self.stop(signal.SIGKILL)
        await self.start()


class ChildProcess(Faults):
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
        self.output: list[bytes] = []  # every line it printed, ready line included
        self._printed = asyncio.Condition()

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
        seen = self.output = []
        while True:
            line = await asyncio.wait_for(output.readline(), 30)
            if not line:
                await self.process.wait()
                self.process = None
                raise RuntimeError(f"{self.argv[0]} exited:\n" + b"".join(seen).decode(errors="replace"))
            seen.append(line)
            if self.ready in line:
                break
        self._drain = asyncio.ensure_future(self._collect(output))  # a full pipe would block it
        return self.process.pid

    async def _collect(self, output: asyncio.StreamReader) -> None:
        while line := await output.readline():
            async with self._printed:
                self.output.append(line)
                self._printed.notify_all()

    @property
    def text(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    async def printed(self, text: bytes, timeout: float = 15) -> bytes:
        """The first line it printed that contains `text`, once it has printed it."""

        def found() -> bytes | None:
            return next((line for line in self.output if text in line), None)

        async with self._printed:
            await asyncio.wait_for(self._printed.wait_for(found), timeout)
        line = found()
        assert line is not None
        return line

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    async def wait(self, timeout: float = 30) -> int:
        """Its exit status, once it has exited by itself (or been signalled)."""
        assert self.process is not None
        status = await asyncio.wait_for(self.process.wait(), timeout)
        if self._drain is not None:
            await self._drain
        self.process = None
        return status

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Stop it by its PID; its exit status (None if it was not running). One that has not
        exited `timeout` seconds after `sig` is killed (SIGKILL), and the test fails."""
        if self.process is None:
            return None
        process = self.process
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused process would not hear `sig`
            os.kill(process.pid, sig)
        try:
            status = await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()
            status = None
        if self._drain is not None:
            await self._drain
        self.process = None
        if status is None:
            raise AssertionError(
                f"{self.argv[0]} (PID {process.pid}) had not stopped {timeout:g}s after signal "
                f"{sig}: killed\n{self.text}"
            )
        return status


async def communicate(process: asyncio.subprocess.Process, timeout: float = 60) -> tuple[bytes, bytes]:
    """`process.communicate()` within `timeout` seconds; killed by its PID if it is still
    running then (or if the test is cancelled), so that no process outlives its test."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return out or b"", err or b""
