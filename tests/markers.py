"""The marker rule: a test that starts another program says so with a marker.

`process` marks a test that starts a subprocess (uvicorn, the standalone sidecar, curl,
Python children), `redis` one that starts redis-server, `node` one that needs node or
npm. `python -m pytest -m "not process and not redis and not node and not fuzz"` is then the fast
in-process loop. The rule is checked, not trusted: an audit hook sees every program a
test starts (in its fixtures too), and a test that started one without its marker fails
at teardown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import pytest

__all__ = ["missing_markers", "program_of", "required_markers"]

# The audit events a new program starts with (os.fork: a child of this interpreter).
_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.system", "os.exec", "os.fork"})


def required_markers(program: str) -> set[str]:
    """The markers a test that starts `program` (a path or a name) must carry."""
    name = os.path.basename(program)
    if name.startswith("redis-server"):
        return {"redis"}
    if name in ("node", "npm", "npx"):
        return {"node", "process"}
    return {"process"}


def missing_markers(markers: Collection[str], programs: Sequence[str]) -> dict[str, set[str]]:
    """For each program started, the markers the test lacks (only the programs that lack some)."""
    missing = {program: required_markers(program) - set(markers) for program in programs}
    return {program: lacking for program, lacking in missing.items() if lacking}


def program_of(event: str, args: tuple[Any, ...]) -> str | None:
    """The program an audit event starts, or None for an event that starts none."""
    if event not in _EVENTS:
        return None
    if event == "os.fork":
        return sys.executable
    if event == "os.system":  # (command,)
        words = os.fsdecode(args[0]).split()
        return words[0] if words else "sh"
    # subprocess.Popen: (executable, argv, cwd, env), the shell for shell=True; os.posix_spawn
    # and os.exec: (path, argv, env); os.spawn: (mode, path, argv, env).
    program = args[1] if event == "os.spawn" else args[0]
    return os.fsdecode(program)


class _Recorder:
    """The programs started while a test runs (None: between tests, nothing recorded)."""

    def __init__(self) -> None:
        self.started: list[str] | None = None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.started is None or event not in _EVENTS:
            return
        try:
            program = program_of(event, args)
        except Exception:  # an exception here would stop the program from starting
            program = "an unknown program"
        if program is not None:
            self.started.append(program)


_recorder = _Recorder()
sys.addaudithook(_recorder)  # audit hooks cannot be removed: it records only while a test runs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _recorder.started = []
    try:
        return (yield)
    finally:
        _recorder.started = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    started = list(_recorder.started or ())
    missing = missing_markers({mark.name for mark in item.iter_markers()}, started)
    if missing:
        lines = "; ".join(f"{program} needs {', '.join(sorted(m))}" for program, m in missing.items())
        pytest.fail(f"this test starts programs without saying so: {lines}", pytrace=False)
    return result
