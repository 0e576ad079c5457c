"""`pubsub.rabbitmq` under faults, each on a rabbitmq-server of its own: RabbitMQ restarted and
crashed under load, replicas killed (SIGKILL) with messages in flight. Zero messages lost;
the duplicates are counted and reported (at least once, not exactly once).

The components keep their queues (`deletedWhenUnused: false`): with daprd's default a queue
is deleted, with what it holds, when its last consumer goes, which no component can make safe.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr

from ..rabbitmq_server import RabbitMQServer, rabbitmq_server
from .faults import Replica, Tally, numbered_event, paused, replicas, restarted_line, run_fault, survived_line

aio_pika = pytest.importorskip("aio_pika", reason="the rabbitmq extra is not installed")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.process]

FAST = (
    "  - name: deletedWhenUnused\n    value: 'false'\n"
    "  - name: reconnectWaitSeconds\n    value: 200ms\n"
    "  - name: prefetchCount\n    value: '20'\n"
)
PREFETCH = 20


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RabbitMQServer]:
    async with rabbitmq_server(tmp_path) as started:
        yield started


def resources_for(folder: Path, server: RabbitMQServer, extra: str = FAST) -> Path:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.rabbitmq\n  version: v1\n  metadata:\n"
        f"  - name: connectionString\n    value: {server.url()}\n" + extra
    )
    return resources


# -- RabbitMQ restarted or crashed while an app publishes and consumes ---------------------------


def new_replica(server: RabbitMQServer, resources: Path) -> Replica:
    return Replica("rabbitmq", "FASTAPI_DAPR_TEST_RABBITMQ", server.url(), resources)


def app_on(folder: Path, server: RabbitMQServer) -> tuple[FastAPI, Dapr]:
    app = FastAPI()
    return app, Dapr(app, app_id="checkout", resources_path=resources_for(folder, server))


async def test_nothing_is_lost_when_rabbitmq_restarts_under_load(
    server: RabbitMQServer, tmp_path: Path, fault_report: Any
) -> None:
    app, dapr = app_on(tmp_path, server)
    await run_fault(app, dapr, server.restart, fault_report)


async def test_nothing_is_lost_when_rabbitmq_crashes_under_load(
    server: RabbitMQServer, tmp_path: Path, fault_report: Any
) -> None:
    # SIGKILL: what RabbitMQ confirmed is on disk (persistent messages, a durable queue); what it
    # had not confirmed was refused to the publisher, who publishes it again.
    app, dapr = app_on(tmp_path, server)
    await run_fault(app, dapr, server.crash, fault_report)


async def test_a_paused_rabbitmq_is_waited_for_and_nothing_is_lost(
    server: RabbitMQServer, tmp_path: Path, fault_report: Any
) -> None:
    app, dapr = app_on(tmp_path, server)

    # While it is paused, publishes wait, or time out and are refused.
    await run_fault(app, dapr, paused(server, 2.0), fault_report)


# -- replicas in processes of their own, killed with SIGKILL -------------------------------------


class HandledLog(Tally):
    """The `handled` queue the replicas write to: how often each message was handled, by whom."""

    def __init__(self, connection: Any, channel: Any, queue: Any) -> None:
        super().__init__()
        self.connection = connection
        self.channel = channel
        self.queue = queue
        self._records: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @classmethod
    async def open(cls, url: str) -> HandledLog:
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        queue = await channel.declare_queue("handled", durable=True)
        log = cls(connection, channel, queue)
        await queue.consume(log._on_record, no_ack=True)
        return log

    async def _on_record(self, message: Any) -> None:
        await self._records.put(json.loads(message.body))

    async def until(self, done: Callable[[], bool], timeout: float = 60) -> None:
        async def follow() -> None:
            while not done():
                self.count(await self._records.get())

        await asyncio.wait_for(follow(), timeout)

    async def catch_up(self) -> None:
        """Read all that is in the queue now (what a killed replica wrote before it died): up to a
        marker published after it."""
        marker = {"n": -1, "pid": 0}
        await self.channel.default_exchange.publish(aio_pika.Message(json.dumps(marker).encode()), "handled")
        while (record := await asyncio.wait_for(self._records.get(), 30)) != marker:
            self.count(record)

    async def close(self) -> None:
        await self.connection.close()


async def publish_numbered(server: RabbitMQServer, total: int) -> None:
    from fastapi_dapr.brokers.rabbitmq import RabbitMQBroker

    publisher = RabbitMQBroker(
        "pubsub", {"connectionString": server.url(), "deletedWhenUnused": "false"}, app_id="publisher"
    )
    await publisher.start()
    try:
        for n in range(total):
            await publisher.publish("jobs", numbered_event(n), {})
    finally:
        await publisher.close()


async def queued(server: RabbitMQServer, queue: str) -> int:
    """The messages of `queue` ready for a consumer (RabbitMQ's count, unacknowledged ones aside)."""
    connection = await aio_pika.connect(server.url())
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count: int = declared.declaration_result.message_count
        return count
    finally:
        await connection.close()


async def test_a_replica_killed_with_messages_in_flight_then_restarted_loses_nothing(
    server: RabbitMQServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 1000  # 2.5 s of work at 20 in flight: the kill comes with the prefetch full
    log = await HandledLog.open(server.url())
    resources = resources_for(tmp_path, server)
    async with replicas(1, lambda: new_replica(server, resources)) as (replica,):
        first = await replica.start()  # its queue is declared: what is published next waits there
        publishing = asyncio.create_task(publish_numbered(server, total))
        await log.until(lambda: log.by_pid[first] >= 30)
        await replica.stop(signal.SIGKILL)  # while it holds a full prefetch, and more are coming
        await publishing
        await log.catch_up()
        handled_before = log.by_pid[first]
        # Its unacknowledged messages are back in the queue, with those it had not been given.
        assert await queued(server, "checkout-jobs") >= total - handled_before
        second = await replica.start()  # a new process: a new consumer of the same queue
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))  # every message, at least once
        # Only what it held unacknowledged at the kill (at most the prefetch) was handled twice.
        assert log.duplicates <= PREFETCH
        assert log.by_pid[second] > 0
        await replica.stop()  # graceful: the last acks go out
    assert await queued(server, "checkout-jobs") == 0
    await log.close()
    fault_report(restarted_line(total, handled_before, log.duplicates))


async def test_two_replicas_share_a_topic_and_one_killed_loses_nothing(
    server: RabbitMQServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 1000
    log = await HandledLog.open(server.url())
    resources = resources_for(tmp_path, server)
    async with replicas(2, lambda: new_replica(server, resources)) as (victim, survivor):
        doomed, lasting = await victim.start(), await survivor.start()
        publishing = asyncio.create_task(publish_numbered(server, total))
        await log.until(lambda: log.by_pid[doomed] >= 20 and log.by_pid[lasting] >= 20)  # shared
        await victim.stop(signal.SIGKILL)
        await publishing
        await log.catch_up()  # what it recorded before it died, read
        handled_before = log.by_pid[doomed]
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))
        assert log.by_pid[doomed] == handled_before  # nothing more from the dead one
        assert log.duplicates <= PREFETCH  # what it held unacknowledged, handled by the survivor
        await survivor.stop()
    assert await queued(server, "checkout-jobs") == 0
    await log.close()
    fault_report(survived_line(total, handled_before, log.duplicates))
