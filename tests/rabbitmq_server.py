"""A private rabbitmq-server for the tests: its own node, ports, epmd and folders, stopped by its PID.

Debian's `rabbitmq-server` (3.10) is run as a node of its own (`fdtest<random>@localhost`)
with its AMQP port, its distribution port and its epmd (an `epmd` child on a port of its
own, so that nothing is shared with a system RabbitMQ or left behind), its configuration,
data and logs under the test's folder, and no plugins. It is run as the Erlang VM
itself (the start script execs `erl`), so that its PID is the broker's: SIGTERM stops it
gracefully, SIGKILL crashes it, SIGSTOP pauses it. `restart()` keeps its node name, ports
and data, as a broker restarted in place does.

`vhosts` virtual hosts (`v0`, `v1`, ...) are made at boot for tests that share one server
and want a broker of their own each (`next_vhost()`); `tls` (certificate, key and CA
files) adds a TLS listener, with client certificates required when `client_certificates`,
and the EXTERNAL mechanism (the certificate's CN as the user name) for the users named in
`external_users`.

Missing locally, rabbitmq-server skips the test; in CI (CI=true) it fails it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from .background_process import BackgroundProcess
from .conftest import require_tool

__all__ = ["RabbitMQServer", "rabbitmq_server", "shared_rabbitmq_server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_script() -> str:
    """The start script itself: Debian's /usr/sbin/rabbitmq-server is a wrapper that runs it
    as the `rabbitmq` user with the system's folders."""
    wrapper = os.path.realpath(require_tool("rabbitmq-server"))
    if os.path.basename(wrapper) == "rabbitmq-script-wrapper":
        return os.path.join(os.path.dirname(wrapper), "rabbitmq-server")
    return wrapper


def _password_hash(password: str) -> str:
    """RabbitMQ's salted SHA-256 password hash, as its definitions files hold it."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class Epmd(BackgroundProcess):
    """An Erlang port mapper of the node's own, in the foreground (not a daemon)."""

    def __init__(self, port: int) -> None:
        argv = [require_tool("epmd"), "-port", str(port), "-address", "127.0.0.1", "-d"]
        super().__init__(argv, ready=b"epmd running")


class RabbitMQServer(BackgroundProcess):
    """One private rabbitmq-server; `start()` after `stop()` runs it again on its data."""

    def __init__(
        self,
        folder: Path,
        *,
        vhosts: int = 0,
        tls: tuple[Path, Path, Path] | None = None,
        client_certificates: bool = False,
        external_users: Sequence[str] = (),
    ) -> None:
        self.folder = folder / f"rabbitmq-{secrets.token_hex(3)}"
        self.folder.mkdir(parents=True)
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.node = f"fdtest{secrets.token_hex(4)}@localhost"
        self.epmd_port = free_port()
        self.epmd = Epmd(self.epmd_port)
        self._vhosts = [f"v{n}" for n in range(vhosts)]
        self._given = 0
        config = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "disk_free_limit.absolute = 1MB",  # a nearly full disk must not block publishers
            "log.console.level = info",
            f"definitions.local.path = {self._definitions(external_users)}",
            "definitions.import_backend = local_filesystem",
        ]
        plugins: list[str] = []
        if tls is not None:
            certificate, key, ca = tls
            config += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {ca}",
                f"ssl_options.certfile = {certificate}",
                f"ssl_options.keyfile = {key}",
                f"ssl_options.verify = {'verify_peer' if client_certificates else 'verify_none'}",
                f"ssl_options.fail_if_no_peer_cert = {'true' if client_certificates else 'false'}",
            ]
            if external_users:
                plugins.append("rabbitmq_auth_mechanism_ssl")
                config += [
                    "auth_mechanisms.1 = PLAIN",
                    "auth_mechanisms.2 = EXTERNAL",
                    "ssl_cert_login_from = common_name",
                ]
        (self.folder / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        (self.folder / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (self.folder / "rabbitmq-env.conf").write_text("")  # not the system's /etc/rabbitmq one
        (self.folder / "home").mkdir()  # the Erlang cookie of this node
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder / "home"),
            "LANG": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "data"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # The script execs the VM itself (so that the PID is the broker's), without a shell.
            "RABBITMQ_ALLOW_INPUT": "1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-noinput -start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
            ),
        }
        super().__init__([_server_script()], ready=b"Server startup complete", env=environment)

    def _definitions(self, external_users: Sequence[str]) -> Path:
        """The users and virtual hosts made at boot: guest (password guest) everywhere."""
        vhosts = ["/", *self._vhosts]
        users = [{"name": "guest", "password_hash": _password_hash("guest"), "tags": "administrator"}]
        users += [{"name": name, "password_hash": "", "tags": ""} for name in external_users]
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        definitions: dict[str, Any] = {
            "users": [{**user, "hashing_algorithm": "rabbit_password_hashing_sha256"} for user in users],
            "vhosts": [{"name": name} for name in vhosts],
            "permissions": [
                {"user": user["name"], "vhost": name, **everything} for user in users for name in vhosts
            ],
        }
        path = self.folder / "definitions.json"
        path.write_text(json.dumps(definitions))
        return path

    def url(self, vhost: str = "/") -> str:
        """The AMQP URL of `vhost`, as guest."""
        path = "" if vhost == "/" else f"/{vhost}"
        return f"amqp://guest:guest@127.0.0.1:{self.port}{path}"

    def next_vhost(self) -> str:
        """A virtual host no test has had yet: a broker of its own on a shared server."""
        if self._given >= len(self._vhosts):
            raise AssertionError(f"the {len(self._vhosts)} virtual hosts made at boot are all taken")
        self._given += 1
        return self._vhosts[self._given - 1]

    def start_sync(self) -> int:
        if self.epmd.process is None:
            self.epmd.start_sync()
        return super().start_sync()

    def close_sync(self) -> None:
        """The broker and its epmd stopped (`stop()` leaves the epmd, for a restart)."""
        try:
            self.stop_sync()
        finally:
            self.epmd.stop_sync()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)


@contextlib.asynccontextmanager
async def rabbitmq_server(folder: Path, **options: Any) -> AsyncIterator[RabbitMQServer]:
    """A server of the test's own."""
    server = RabbitMQServer(folder, **options)
    try:
        await server.start()
        yield server
    finally:
        await server.close()


@contextlib.contextmanager
def shared_rabbitmq_server(folder: Path, **options: Any) -> Iterator[RabbitMQServer]:
    """A server for the tests of a module (a sync fixture's), each on `next_vhost()`."""
    server = RabbitMQServer(folder, **options)
    try:
        server.start_sync()
        yield server
    finally:
        server.close_sync()
