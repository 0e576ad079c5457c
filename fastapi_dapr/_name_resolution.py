"""The name-resolution file: where each standalone sidecar on this machine listens.

Several sidecars started with the same `--name-resolution FILE` share it, as
`dapr run` apps share mDNS. Each one registers itself when it starts (its app
id, its loopback API port, its process id and a random sidecar token) and
removes itself when it stops. Changes are made under an exclusive `flock` on
`FILE.lock`, written to a temporary file in the same folder and moved over
`FILE` (`os.replace`), so a reader sees either the old table or the new one.

The file is this user's only (mode 0600, in a folder others can't write to
being the user's business): a file owned by someone else, or writable by
others, is refused. Only loopback addresses are taken from it.

```json
{"version": 1, "apps": {"orders": {"host": "127.0.0.1", "port": 3501, "pid": 4242,
                                   "token": "<random>", "namespace": "default"}}}
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__: list[str] = []

VERSION = 1


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to replace
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


class NameResolutionFile:
    """One name-resolution file; `lookup` is cheap (the table is re-read only when the file changed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._seen: tuple[int, int, int] | None = None
        self._table: dict[str, Registration] = {}

    # -- reading -------------------------------------------------------------------------------

    def _check_owner(self, info: os.stat_result) -> None:
        if info.st_uid != os.getuid():
            raise NameResolutionError(f"{self.path}: is owned by another user; refused")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise NameResolutionError(f"{self.path}: is writable by other users; refused (chmod 600)")

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
            if not _is_loopback(registration.host):
                raise NameResolutionError(
                    f"{self.path}: apps.{app_id}: {registration.host} is not a loopback address; refused"
                )
            table[registration.app_id] = registration
        return table

    def read(self) -> dict[str, Registration]:
        """Every registration in the file (none if there is no file)."""
        try:
            with open(self.path, encoding="utf-8") as file:
                info = os.fstat(file.fileno())
                key = (info.st_ino, info.st_mtime_ns, info.st_size)
                if key == self._seen:
                    return self._table
                self._check_owner(info)
                text = file.read()
        except FileNotFoundError:
            self._seen, self._table = None, {}
            return {}
        except OSError as exc:
            raise NameResolutionError(f"{self.path}: cannot be read: {exc.strerror or exc}") from None
        self._table = self._parse(text)
        self._seen = key
        return self._table

    def lookup(self, app_id: str) -> Registration | None:
        """The running sidecar of `app_id`; None if none is registered, or it has died."""
        registration = self.read().get(app_id)
        if registration is None or not _alive(registration.pid):
            return None
        return registration

    # -- changing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

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
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._seen = None

    def register(self, registration: Registration) -> None:
        """Add this sidecar; `NameResolutionError` if a running sidecar has the same app id."""
        with self._locked():
            table = dict(self.read())
            existing = table.get(registration.app_id)
            if existing is not None and existing.pid != registration.pid and _alive(existing.pid):
                raise NameResolutionError(
                    f"{self.path}: app id {registration.app_id!r} is already registered by the sidecar "
                    f"of process {existing.pid} on port {existing.port}"
                )
            # Entries of sidecars that died without deregistering are dropped on the way.
            table = {key: entry for key, entry in table.items() if _alive(entry.pid)}
            table[registration.app_id] = registration
            self._write(table)

    def deregister(self, registration: Registration) -> None:
        """Remove this sidecar's own entry (not one another sidecar wrote since)."""
        with self._locked():
            table = dict(self.read())
            existing = table.get(registration.app_id)
            if existing is None or existing.token != registration.token:
                return
            del table[registration.app_id]
            self._write(table)
