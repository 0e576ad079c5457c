"""A server the tests run beside themselves, usable from any event loop and from none.

`ChildProcess` (tests/processes.py) belongs to the event loop that started it, which suits
a server started by one test. A server shared by the tests of a module (a broker that
takes seconds to boot) must outlive each test's loop: this one is a `subprocess.Popen`
whose output a thread reads, so that the ready line is awaited without polling and the
pipe never fills. Sync methods for module-scoped fixtures, async ones (the same work in
a thread) for the tests; stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from .processes import Faults

__all__ = ["BackgroundProcess"]


class BackgroundProcess(Faults):
    """One run of `argv` at a time; `start()` again after `stop()` runs it anew."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready: bytes,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 60,
    ) -> None:
        self.argv = list(argv)
        self.ready = ready
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.output: list[bytes] = []  # every line it printed, in the order printed
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def text(self) -> str:
        with self._changed:
            return b"".join(self.output).decode(errors="replace")

    def start_sync(self) -> int:
        """Run it; its PID once it has printed the `ready` text."""
        self.output = []
        self.process = process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()
        with self._changed:
            ready = self._changed.wait_for(
                lambda: process.poll() is not None or any(self.ready in line for line in self.output),
                self.start_timeout,
            )
            started = ready and process.poll() is None
        if not started:
            self.stop_sync(signal.SIGKILL)
            raise RuntimeError(f"{self.argv[0]} did not start:\n{self.text}")
        return process.pid

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.output.append(line)
                self._changed.notify_all()
        process.stdout.close()
        process.wait()
        with self._changed:
            self._changed.notify_all()

    def printed_sync(self, text: bytes, timeout: float = 30) -> bytes:
        """The first line it printed (since it started) that contains `text`."""
        with self._changed:
            if not self._changed.wait_for(lambda: any(text in line for line in self.output), timeout):
                raise AssertionError(f"{self.argv[0]} did not print {text!r} within {timeout:g}s")
            return next(line for line in self.output if text in line)

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def stop_sync(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Stop it by its PID; its exit status (None if it was not running). One that has not
        exited `timeout` seconds after `sig` is killed (SIGKILL), and the test fails."""
        process, self.process = self.process, None
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused process would not hear `sig`
            os.kill(process.pid, sig)
        try:
            status: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
            status = None
        if self._reader is not None:
            self._reader.join(timeout)
        if status is None:
            raise AssertionError(
                f"{self.argv[0]} (PID {process.pid}) had not stopped {timeout:g}s after {sig}"
            )
        return status

    async def start(self) -> int:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        return await asyncio.to_thread(self.stop_sync, sig, timeout)

    async def printed(self, text: bytes, timeout: float = 30) -> bytes:
        return await asyncio.to_thread(self.printed_sync, text, timeout)
