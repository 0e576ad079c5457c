"""The name-resolution file: where each standalone sidecar on this machine listens.

Several sidecars started with the same `--name-resolution FILE` share it, as
`dapr run` apps share mDNS. Each one registers itself when it starts (its app
id, its loopback API port, its process id and a random sidecar token) and
removes itself when it stops. Changes are made under an exclusive lock on
`FILE.lock` (tried without blocking, for `LOCK_WAIT` seconds at most), written
to a temporary file in the same folder and moved over `FILE` (`os.replace`), so
a reader sees either the old table or the new one.

Each sidecar holds an exclusive lock on `FILE.<app-id>.lock` for as long as it
runs: the system releases it when the process ends, however it ends, so an
entry whose lock can be taken is a dead sidecar's (a process id, which may be
reused, is not what decides). The lock files are left in place. The locks are
`flock` where there is one (Linux, macOS, the BSDs) and `msvcrt.locking` on
Windows, whose locks are exclusive only: there a reader's look at an app's lock
is an exclusive try of a moment, so two readers at once may both take the app
for running.

The files are this user's only: a file or lock file that is a symbolic link,
belongs to someone else or is writable by others is refused, and so is a folder
others may write to, unless it is sticky and the user's or root's (as /tmp).
Where the system has no user ids (Windows), the folder's permissions are the
system's business and only links are refused. Only loopback addresses are
taken from the file.

On the event loop, `find` answers from what it found last while the file is
unchanged (one `stat`) and for `RECHECK_AFTER` seconds at most; otherwise it reads
the file and tries the lock in a worker thread, so an invocation never opens,
reads or locks a file in the loop.

```json
{"version": 1, "apps": {"orders": {"host": "127.0.0.1", "port": 3501, "pid": 4242,
                                   "token": "<random>", "namespace": "default"}}}
```
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .addresses import is_loopback
from .errors import describe
from .file_locks import lock_once, try_lock, unlock

__all__: list[str] = []

VERSION = 1
LOCK_WAIT = 5.0  # seconds a change waits for FILE.lock before it fails
RECHECK_AFTER = 1.0  # seconds `find` trusts a running sidecar it found before it tries its lock again
_APP_LOCK_WAIT = 0.5  # seconds: a reader holds an app's lock for a moment only
_REPLACE_POLL = 0.01


# Without user ids (Windows) there are no owners and modes to check, and no O_NOFOLLOW:
# a link is found with lstat before the file is opened, and the open one compared with it.
_USER_IDS = hasattr(os, "getuid")
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = _NO_FOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
# Windows refuses to replace a file another process has open (a reader, for a moment).
_REPLACE_MAY_WAIT = os.name == "nt"


_Version = tuple[int, int, int, int]


class NameResolutionError(Exception):
    """The file cannot be used, or the app id is taken by a running sidecar."""


@dataclasses.dataclass(frozen=True)
class Registration:
    """One sidecar, as the file lists it."""

    app_id: str
    host: str
    port: int
    pid: int
    token: str
    namespace: str = "default"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "pid": self.pid,
            "token": self.token,
            "namespace": self.namespace,
        }


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _replace(source: str, target: Path, wait: float) -> None:
    """`os.replace`; on Windows tried again for `wait` seconds while a reader has `target` open."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if not _REPLACE_MAY_WAIT or time.monotonic() >= deadline:
                raise
        time.sleep(_REPLACE_POLL)


class NameResolutionFile:
    """One name-resolution file; `lookup` is cheap (the table is re-read only when the file changed).

    Every problem with the file system is a `NameResolutionError`, with the path and the reason."""

    def __init__(self, path: str | os.PathLike[str], *, lock_wait: float = LOCK_WAIT) -> None:
        self.path = Path(path).absolute()
        self.lock_wait = lock_wait
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._cache = threading.Lock()  # lookups on the event loop, changes in a worker thread
        self._seen: tuple[int, int, int] | None = None
        self._table: dict[str, Registration] = {}
        self._held: dict[str, int] = {}  # app id -> the descriptor of the lock this process holds
        # `find`, on the event loop: running sidecars found (in which version of the file, and
        # until when they are trusted), and the look-ups under way in a worker thread.
        self._found: dict[str, tuple[Registration, _Version, float]] = {}
        self._finding: dict[str, asyncio.Future[tuple[Registration | None, _Version | None]]] = {}

    def app_lock_path(self, app_id: str) -> Path:
        """`FILE.<app-id>.lock`, held by the running sidecar of `app_id`."""
        name = quote(app_id, safe="")
        if len(name) > 100:  # a file name has 255 bytes at most
            name = "sha256-" + hashlib.sha256(app_id.encode()).hexdigest()
        return self.path.with_name(f"{self.path.name}.{name}.lock")

    # -- checks --------------------------------------------------------------------------------

    def _check_owner(self, info: os.stat_result, path: Path | None = None) -> None:
        path = path or self.path
        if not stat.S_ISREG(info.st_mode):
            raise NameResolutionError(f"{path}: is not a regular file; refused")
        if not _USER_IDS:
            return
        if info.st_uid != os.getuid():
            raise NameResolutionError(f"{path}: is owned by another user; refused")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise NameResolutionError(f"{path}: is writable by other users; refused (chmod 600)")

    def _check_folder(self, *, create: bool) -> bool:
        """Refuse a folder others could swap the files in; False if it does not exist (and
        `create` is false). A folder others may write to is accepted only when it is sticky
        (others can't remove or rename this user's files) and this user's or root's."""
        folder = self.path.parent
        if create:
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except FileExistsError:
                raise NameResolutionError(f"{folder}: is not a folder") from None
            except OSError as exc:
                raise NameResolutionError(f"{folder}: cannot be created: {describe(exc)}") from None
        try:
            info = os.stat(folder)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise NameResolutionError(f"{folder}: cannot be used: {describe(exc)}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise NameResolutionError(f"{folder}: is not a folder")
        if not _USER_IDS:
            return True
        if info.st_uid not in (os.getuid(), 0):
            raise NameResolutionError(f"{folder}: belongs to another user; refused")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            raise NameResolutionError(
                f"{folder}: other users may write to it and it is not sticky; refused "
                "(use a folder of your own, such as $XDG_RUNTIME_DIR)"
            )
        return True

    def _open_checked(self, path: Path, flags: int) -> int:
        """`path` opened without following a symbolic link, and checked as `_check_owner` does."""
        before = None
        if not _NO_FOLLOW:
            try:
                before = os.lstat(path)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
            if before is not None and stat.S_ISLNK(before.st_mode):
                raise NameResolutionError(f"{path}: is a symbolic link; refused")
        try:
            descriptor = os.open(path, flags | _OPEN_FLAGS, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NameResolutionError(f"{path}: is a symbolic link; refused") from None
            raise
        try:
            info = os.fstat(descriptor)
            if before is not None and (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
                raise NameResolutionError(f"{path}: was replaced while it was opened; refused")
            self._check_owner(info, path)
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    # -- reading -------------------------------------------------------------------------------

    def _parse(self, text: str) -> dict[str, Registration]:
        if not text.strip():
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise NameResolutionError(f"{self.path}: is not JSON: {exc}") from None
        apps = data.get("apps") if isinstance(data, dict) else None
        if not isinstance(apps, dict) or data.get("version") != VERSION:
            raise NameResolutionError(f"{self.path}: is not a name-resolution file (version {VERSION})")
        table: dict[str, Registration] = {}
        for app_id, entry in apps.items():
            try:
                registration = Registration(
                    app_id=str(app_id),
                    host=str(entry["host"]),
                    port=int(entry["port"]),
                    pid=int(entry["pid"]),
                    token=str(entry["token"]),
                    namespace=str(entry.get("namespace", "default")),
                )
            except (KeyError, TypeError, ValueError):
                raise NameResolutionError(
                    f"{self.path}: apps.{app_id}: needs host, port, pid and token"
                ) from None
            if not is_loopback(registration.host):
                raise NameResolutionError(
                    f"{self.path}: apps.{app_id}: {registration.host} is not a loopback address; refused"
                )
            table[registration.app_id] = registration
        return table

    def read(self) -> dict[str, Registration]:
        """Every registration in the file (none if there is no file), dead sidecars' included."""
        with self._cache:
            try:
                descriptor = self._open_checked(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self._seen, self._table = None, {}
                return {}
            except OSError as exc:
                raise NameResolutionError(f"{self.path}: cannot be read: {describe(exc)}") from None
            with os.fdopen(descriptor, encoding="utf-8") as file:
                info = os.fstat(file.fileno())
                key = (info.st_ino, info.st_mtime_ns, info.st_size)
                if key == self._seen:
                    return self._table
                self._check_folder(create=False)
                try:
                    text = file.read()
                except (OSError, UnicodeDecodeError) as exc:
                    raise NameResolutionError(f"{self.path}: cannot be read: {exc}") from None
            self._table = self._parse(text)
            self._seen = key
            return self._table

    def running(self, app_id: str) -> bool:
        """Whether the sidecar of `app_id` runs: it holds its app lock (this process's own, or
        one that can't be taken even shared for a moment)."""
        if app_id in self._held:
            return True
        path = self.app_lock_path(app_id)
        try:
            descriptor = self._open_checked(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise NameResolutionError(f"{path}: cannot be read: {describe(exc)}") from None
        try:
            taken = lock_once(descriptor, exclusive=False)
            if taken:
                unlock(descriptor)
            return not taken
        finally:
            os.close(descriptor)

    def lookup(self, app_id: str) -> Registration | None:
        """The running sidecar of `app_id`; None if none is registered, or it has died."""
        registration = self.read().get(app_id)
        if registration is None or not self.running(app_id):
            return None
        return registration

    def _version(self) -> _Version | None:
        """What tells one version of the file from another (a change replaces it); None if
        it can't be seen."""
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)

    def _versioned_lookup(self, app_id: str) -> tuple[Registration | None, _Version | None]:
        version = self._version()  # before the read: a change after it is seen as one
        return self.lookup(app_id), version

    async def find(self, app_id: str) -> Registration | None:
        """`lookup` for the event loop, which it never holds up opening or locking files.

        A running sidecar found is the answer while the file is the same (a `stat`), for
        `RECHECK_AFTER` seconds at most: one that stops removes its entry and is seen gone
        at once, one killed is seen gone once its lock is tried again (until then a call to
        it fails to connect). Otherwise the file is read and the lock tried in a worker
        thread, one look-up at a time for each app id; an id not found is looked up again
        on the next call, so a sidecar that has just started is found at once."""
        found = self._found.get(app_id)
        if found is not None:
            registration, version, until = found
            if time.monotonic() < until and self._version() == version:
                return registration
        finding = self._finding.get(app_id)
        if finding is None:
            finding = asyncio.get_running_loop().run_in_executor(None, self._versioned_lookup, app_id)
            self._finding[app_id] = finding
            finding.add_done_callback(lambda done: self._found_one(app_id, done))
        answer, _ = await asyncio.shield(finding)  # one that gives up leaves it to the others
        return answer

    def _found_one(
        self, app_id: str, done: asyncio.Future[tuple[Registration | None, _Version | None]]
    ) -> None:
        del self._finding[app_id]
        registration, version = (
            (None, None) if done.cancelled() or done.exception() is not None else done.result()
        )
        if registration is None or version is None:
            self._found.pop(app_id, None)
        else:
            self._found[app_id] = (registration, version, time.monotonic() + RECHECK_AFTER)

    # -- changing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, stop: Callable[[], bool] | None = None) -> Iterator[None]:
        self._check_folder(create=True)
        try:
            descriptor = self._open_checked(self._lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise NameResolutionError(f"{self._lock_path}: cannot be opened: {describe(exc)}") from None
        taken = False
        try:
            taken = try_lock(descriptor, True, self.lock_wait, stop)
            if not taken:
                reason = (
                    "the sidecar is stopping"
                    if stop is not None and stop()
                    else (f"another process has held it for {self.lock_wait:g}s")
                )
                raise NameResolutionError(f"{self._lock_path}: could not be locked: {reason}")
            yield
        finally:
            if taken:
                unlock(descriptor)
            os.close(descriptor)

    def _write(self, table: dict[str, Registration]) -> None:
        body = json.dumps(
            {
                "version": VERSION,
                "apps": {app_id: entry.to_json() for app_id, entry in sorted(table.items())},
            },
            indent=2,
        )
        descriptor, temporary = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
                file.write(body + "\n")
                file.flush()
                os.fsync(file.fileno())
            _replace(temporary, self.path, self.lock_wait)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        with self._cache:
            self._seen = None

    def register(self, registration: Registration, *, stop: Callable[[], bool] | None = None) -> None:
        """Add this sidecar and hold its app lock until `deregister`; `NameResolutionError` if a
        running sidecar has the same app id, or the files can't be used. `stop()` true gives up
        waiting for the file's lock."""
        app_id = registration.app_id
        if app_id in self._held:
            raise NameResolutionError(f"{self.path}: app id {app_id!r} is already registered by this process")
        try:
            with self._locked(stop):
                table = dict(self.read())
                path = self.app_lock_path(app_id)
                held = self._open_checked(path, os.O_RDWR | os.O_CREAT)
                try:
                    if not try_lock(held, True, _APP_LOCK_WAIT, stop):
                        existing = table.get(app_id)
                        by = (
                            f"the sidecar of process {existing.pid} on port {existing.port}"
                            if existing is not None
                            else f"a running sidecar (it holds {path})"
                        )
                        raise NameResolutionError(
                            f"{self.path}: app id {app_id!r} is already registered by {by}"
                        )
                    # Entries of sidecars that died without deregistering are dropped on the way.
                    table = {
                        key: entry for key, entry in table.items() if key != app_id and self.running(key)
                    }
                    table[app_id] = registration
                    self._write(table)
                except BaseException:
                    unlock(held)
                    os.close(held)
                    raise
                self._held[app_id] = held
        except OSError as exc:
            raise NameResolutionError(f"{self.path}: cannot be changed: {describe(exc)}") from None

    def deregister(self, registration: Registration) -> None:
        """Remove this sidecar's own entry (not one another sidecar wrote since), then let go
        of its app lock (which the end of the process would do anyway)."""
        held = self._held.pop(registration.app_id, None)
        try:
            with self._locked():
                table = dict(self.read())
                existing = table.get(registration.app_id)
                if existing is None or existing.token != registration.token:
                    return
                del table[registration.app_id]
                self._write(table)
        except OSError as exc:
            raise NameResolutionError(f"{self.path}: cannot be changed: {describe(exc)}") from None
        finally:
            if held is not None:
                unlock(held)
                os.close(held)
