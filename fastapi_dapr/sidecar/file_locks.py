"""Advisory file locks that the system releases when the process ends, however it ends.

`flock` where the system has it (Linux, macOS, the BSDs): shared and exclusive locks
of the whole file. On Windows, which has no `fcntl`, `msvcrt.locking` of the file's
first byte: exclusive only, so a shared try is an exclusive one there. Every try is
without blocking: a lock another process holds is waited for by trying again, for a
bounded time.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import time
from collections.abc import Callable
from typing import Any

__all__: list[str] = []

POLL = 0.01  # seconds between two tries of a lock another process holds


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_FCNTL: Any = _optional_module("fcntl")
_MSVCRT: Any = _optional_module("msvcrt") if _FCNTL is None else None
# The errno of a lock another holder has: EAGAIN or EACCES from flock, EACCES or
# EDEADLOCK from msvcrt.locking.
_HELD = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, getattr(errno, "EDEADLOCK", errno.EDEADLK)}


def lock_once(descriptor: int, exclusive: bool) -> bool:
    """One try at the lock of `descriptor`'s file; False if another holder has it."""
    try:
        if _FCNTL is not None:
            _FCNTL.flock(descriptor, (_FCNTL.LOCK_EX if exclusive else _FCNTL.LOCK_SH) | _FCNTL.LOCK_NB)
        else:
            os.lseek(descriptor, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position
            _MSVCRT.locking(descriptor, _MSVCRT.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        raise
    return True


def unlock(descriptor: int) -> None:
    """Let go of the lock taken on `descriptor`, if any, before it is closed (Windows may
    release the lock of a closed file only some time later)."""
    with contextlib.suppress(OSError):
        if _FCNTL is not None:
            _FCNTL.flock(descriptor, _FCNTL.LOCK_UN)
        else:
            os.lseek(descriptor, 0, os.SEEK_SET)
            _MSVCRT.locking(descriptor, _MSVCRT.LK_UNLCK, 1)


def try_lock(descriptor: int, exclusive: bool, wait: float, stop: Callable[[], bool] | None = None) -> bool:
    """The lock, tried every `POLL` seconds for `wait` seconds at most (another process holds
    it: there is nothing to await). False if it was still held, or `stop()` became true."""
    deadline = time.monotonic() + wait
    while not lock_once(descriptor, exclusive):
        if time.monotonic() >= deadline or (stop is not None and stop()):
            return False
        time.sleep(POLL)
    return True
