"""The marker rule of tests/markers.py: a test that starts a program without its marker fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import markers

ROOT = Path(__file__).resolve().parent.parent


def test_an_unmarked_test_that_starts_programs_is_reported() -> None:
    started = [sys.executable, "/usr/bin/redis-server", "node", "/usr/bin/curl"]
    assert markers.missing_markers(set(), started) == {
        sys.executable: {"process"},
        "/usr/bin/redis-server": {"redis"},
        "node": {"node", "process"},
        "/usr/bin/curl": {"process"},
    }
    # A marker of the wrong kind is no excuse: redis-server wants `redis`, node both.
    wrong_kind = markers.missing_markers({"process"}, started)
    assert wrong_kind == {"/usr/bin/redis-server": {"redis"}, "node": {"node"}}
    assert markers.missing_markers({"process", "redis", "node"}, started) == {}
    assert markers.missing_markers(set(), []) == {}


def test_the_audit_events_name_the_program_they_start() -> None:
    shell = ("/bin/sh", ["/bin/sh", "-c", "x"], None, None)
    assert markers.program_of("subprocess.Popen", shell) == "/bin/sh"
    assert markers.program_of("os.posix_spawn", (b"/usr/bin/node", [b"node"], {})) == "/usr/bin/node"
    assert markers.program_of("os.spawn", (0, "/usr/bin/npm", ["npm"], {})) == "/usr/bin/npm"
    assert markers.program_of("os.system", ("redis-server --port 0",)) == "redis-server"
    assert markers.program_of("os.fork", ()) == sys.executable
    assert markers.program_of("open", ("/etc/hosts", "r", 0)) is None


@pytest.mark.process
def test_a_program_started_by_a_test_is_recorded() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert markers._recorder.started is not None
    assert sys.executable in markers._recorder.started


@pytest.mark.process
def test_a_run_fails_the_unmarked_test_that_starts_a_program(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.markers"]\n')
    (tmp_path / "test_violating.py").write_text(
        "import subprocess, sys, pytest\n"
        "def test_unmarked():\n"
        "    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
        "@pytest.mark.process\n"
        "def test_marked():\n"
        "    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "2 passed, 1 error" in done.stdout  # the unmarked one passes, then errs at teardown
    assert "ERROR at teardown of test_unmarked" in done.stdout
    assert f"{sys.executable} needs process" in done.stdout
