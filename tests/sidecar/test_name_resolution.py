"""The name-resolution file on the event loop and without `fcntl`: an invocation of another app
never reads the file or tries a lock in the loop's thread, and the module works where there is
no `fcntl` (Windows), with msvcrt's locks."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastapi_dapr.sidecar import name_resolution as _name_resolution
from fastapi_dapr.sidecar.name_resolution import NameResolutionFile, Registration
from fastapi_dapr.sidecar.peers import SIDECAR_TOKEN_HEADER
from fastapi_dapr.sidecar.resources import Resources
from fastapi_dapr.sidecar.standalone import SidecarOptions, StandaloneRuntime, StandaloneSidecar

ROOT = Path(__file__).resolve().parents[2]


async def test_an_invocation_reads_the_file_and_tries_locks_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads: list[bytes] = []

    async def billing_sidecar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 4\r\n\r\npong")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(billing_sidecar, "127.0.0.1", 0)
    path = tmp_path / "names.json"
    billing = NameResolutionFile(path)  # another sidecar: it holds its app's lock while it runs
    billing.register(Registration("billing", "127.0.0.1", server.sockets[0].getsockname()[1], 4242, "tb"))

    loop_thread = threading.get_ident()
    touched: list[tuple[str, int]] = []  # (what, the thread that did it)
    real_open, real_flock = os.open, fcntl.flock

    def recording_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(file).startswith(str(tmp_path)):
            touched.append((f"open {Path(file).name}", threading.get_ident()))
        return real_open(file, flags, *args, **kwargs)

    def recording_flock(descriptor: int, operation: int) -> None:
        touched.append(("flock", threading.get_ident()))
        real_flock(descriptor, operation)

    sidecar = StandaloneSidecar(SidecarOptions(app_id="orders", name_resolution=str(path)))
    runtime = StandaloneRuntime(
        names=sidecar.names,
        channel=None,
        app_id="orders",
        app_api_token=None,
        resources=Resources(),
        stop=lambda: None,
    )
    sidecar.runtime = runtime
    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(fcntl, "flock", recording_flock)
    monkeypatch.setattr(_name_resolution, "RECHECK_AFTER", 60.0, raising=False)  # a slow machine too
    transport = httpx.ASGITransport(app=sidecar, client=("127.0.0.1", 50000))
    try:
        async with server, httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            first = await client.post("/v1.0/invoke/billing/method/ping", content=b"hi")
            assert (first.status_code, first.text) == (200, "pong")
            assert any(what == "open names.json" for what, _ in touched)
            assert any(what == "flock" for what, _ in touched)  # billing's lock was tried
            assert [what for what, thread in touched if thread == loop_thread] == []
            seen = len(touched)
            again = await client.post("/v1.0/invoke/billing/method/ping", content=b"hi")
            assert (again.status_code, again.text) == (200, "pong")
            assert len(touched) == seen  # found a moment ago: the file is not read again
    finally:
        monkeypatch.undo()
        await runtime.close()
    assert heads[0].startswith(b"POST /fastapi-dapr/v1/invoke/ping HTTP/1.1\r\n")
    assert f"{SIDECAR_TOKEN_HEADER}: tb".encode() in heads[0]


async def test_find_sees_a_new_sidecar_and_one_that_stops_at_once_and_a_killed_one_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "names.json"
    names = NameResolutionFile(path)
    assert await names.find("billing") is None
    billing = NameResolutionFile(path)
    entry = Registration("billing", "127.0.0.1", 3502, 4242, "tb")
    billing.register(entry)
    assert await names.find("billing") == entry  # a miss is not remembered
    billing.deregister(entry)
    assert await names.find("billing") is None  # the file changed: looked up again

    billing.register(entry)
    assert await names.find("billing") == entry
    os.close(billing._held.pop("billing"))  # killed: its lock is free, its entry left
    assert await names.find("billing") == entry  # trusted for RECHECK_AFTER
    monkeypatch.setattr(_name_resolution, "RECHECK_AFTER", 0.0)
    names = NameResolutionFile(path)
    assert await names.find("billing") is None
    several = await asyncio.gather(*(names.find("billing") for _ in range(20)))
    assert several == [None] * 20


def test_windows_refusing_to_replace_an_open_file_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows refuses os.replace onto a file a reader has open; the change tries again.
    refusals = [PermissionError(13, "Access is denied")] * 2
    real_replace = os.replace

    def replace(source: str, target: Any) -> None:
        if refusals:
            raise refusals.pop()
        real_replace(source, target)

    monkeypatch.setattr(_name_resolution, "_REPLACE_MAY_WAIT", True)
    monkeypatch.setattr(os, "replace", replace)
    names = NameResolutionFile(tmp_path / "names.json")
    entry = Registration("orders", "127.0.0.1", 3501, os.getpid(), "t")
    names.register(entry)
    assert (refusals, names.lookup("orders")) == ([], entry)


# A fresh interpreter without fcntl, as on Windows, with a stand-in for msvcrt.locking (made
# of flock, which it can still reach) and without os.getuid and os.O_NOFOLLOW.
WITHOUT_FCNTL = """
import errno, json, os, sys, types
import fcntl as real
import asyncio, subprocess  # before the stand-in: they look for msvcrt to tell Windows

sys.modules["fcntl"] = None
del os.getuid, os.O_NOFOLLOW
msvcrt = types.ModuleType("msvcrt")
msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2
def locking(descriptor, mode, length):
    assert length == 1 and os.lseek(descriptor, 0, os.SEEK_CUR) == 0
    if mode == msvcrt.LK_UNLCK:
        real.flock(descriptor, real.LOCK_UN)
        return
    assert mode == msvcrt.LK_NBLCK
    try:
        real.flock(descriptor, real.LOCK_EX | real.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EACCES, "Permission denied") from None
msvcrt.locking = locking
sys.modules["msvcrt"] = msvcrt

import fastapi_dapr.sidecar.cli, fastapi_dapr.sidecar.standalone
from fastapi_dapr.sidecar import file_locks as _file_locks
from fastapi_dapr.sidecar.name_resolution import NameResolutionError, NameResolutionFile, Registration
assert _file_locks._FCNTL is None and _file_locks._MSVCRT is msvcrt

folder = sys.argv[1]
path = os.path.join(folder, "names.json")
running = NameResolutionFile(path)
entry = Registration("orders", "127.0.0.1", 3501, 4242, "t")
running.register(entry)
try:
    NameResolutionFile(path).register(Registration("orders", "127.0.0.1", 3599, 1, "u"))
    raise SystemExit("a running sidecar's id was taken")
except NameResolutionError as exc:
    assert "already registered by the sidecar of process 4242" in str(exc), exc
assert NameResolutionFile(path).lookup("orders") == entry  # its lock is held
running.deregister(entry)
assert NameResolutionFile(path).lookup("orders") is None
os.chmod(path, 0o666)  # as every writable file looks on Windows
again = NameResolutionFile(path)
again.register(Registration("orders", "127.0.0.1", 3599, 1, "u"))
assert json.load(open(path))["apps"]["orders"]["port"] == 3599
os.symlink(path, os.path.join(folder, "link.json"))
try:
    NameResolutionFile(os.path.join(folder, "link.json")).lookup("orders")
    raise SystemExit("a symbolic link was followed")
except NameResolutionError as exc:
    assert "link.json: is a symbolic link; refused" in str(exc), exc
print("ok")
"""


@pytest.mark.process
def test_the_sidecar_imports_and_locks_where_there_is_no_fcntl(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
