"""`pubsub.kafka` under faults, each on a Kafka-protocol broker of its own: the broker restarted
and killed under load (on its S3 store, so that it finds its records and offsets again), paused
under load, and replicas killed (SIGKILL) with messages in flight. Zero messages lost; the
duplicates are counted and reported (at least once, not exactly once).
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

from ..kafka_server import KafkaServer, kafka_server
from .faults import Replica, Tally, numbered_event, paused, replicas, restarted_line, run_fault, survived_line

aiokafka = pytest.importorskip("aiokafka", reason="the kafka extra is not installed")

pytestmark = [pytest.mark.kafka, pytest.mark.process]

FAST = {"heartbeatInterval": "100ms", "sessionTimeout": "6s", "initialOffset": "oldest"}
BUFFERED = 256  # what a replica holds at most beyond what it committed (kafka_consumer._DEPTH)


@pytest.fixture
async def server() -> AsyncIterator[KafkaServer]:
    async with kafka_server() as started:
        await started.create_topics(["jobs"], partitions=4)
        await started.create_topics(["handled", "load"])
        yield started


@pytest.fixture
async def persistent_server() -> AsyncIterator[KafkaServer]:
    async with kafka_server(persistent=True) as started:
        await started.create_topics(["load"])
        yield started


def resources_for(folder: Path, server: KafkaServer) -> Path:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    metadata = {"brokers": server.url, "authType": "none", **FAST}
    lines = "".join(f"  - name: {name}\n    value: '{value}'\n" for name, value in metadata.items())
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.kafka\n  version: v1\n  metadata:\n" + lines
    )
    return resources


# -- the broker restarted, killed or paused while an app publishes and consumes ------------------


@pytest.mark.parametrize("fault", ["restart", "crash"])
async def test_nothing_is_lost_when_the_broker_restarts_or_is_killed_under_load(
    persistent_server: KafkaServer, tmp_path: Path, fault_report: Any, fault: str
) -> None:
    # Killed (SIGKILL): what the broker acknowledged (acks=all) is in its store; what it had
    # not was refused to the publisher, who publishes it again.
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=resources_for(tmp_path, persistent_server))
    await run_fault(app, dapr, getattr(persistent_server, fault), fault_report)


async def test_a_paused_broker_is_waited_for_and_nothing_is_lost(
    server: KafkaServer, tmp_path: Path, fault_report: Any
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=resources_for(tmp_path, server))

    # While it is paused, publishes wait, or time out and are refused.
    await run_fault(app, dapr, paused(server, 2.0), fault_report, during="the pause")


# -- replicas in processes of their own, killed with SIGKILL -------------------------------------


def new_replica(server: KafkaServer, resources: Path) -> Replica:
    return Replica("kafka", "FASTAPI_DAPR_TEST_KAFKA", server.url, resources)


class HandledLog(Tally):
    """The `handled` topic the replicas write to: how often each message was handled, by whom."""

    def __init__(self, server: KafkaServer) -> None:
        super().__init__()
        self.server = server
        self.reader = aiokafka.AIOKafkaConsumer(bootstrap_servers=server.url, auto_offset_reset="earliest")

    async def open(self) -> HandledLog:
        await self.reader.start()
        self.reader.assign([aiokafka.TopicPartition("handled", 0)])
        return self

    async def _read(self) -> list[dict[str, Any]]:
        batches = await self.reader.getmany(timeout_ms=500)
        return [json.loads(record.value) for records in batches.values() for record in records]

    async def until(self, done: Callable[[], bool], timeout: float = 90) -> None:
        async def follow() -> None:
            while not done():
                for record in await self._read():
                    self.count(record)

        await asyncio.wait_for(follow(), timeout)

    async def catch_up(self) -> None:
        """Read all that is in the topic now (what a killed replica wrote before it died): up to a
        marker written after it."""
        writer = aiokafka.AIOKafkaProducer(bootstrap_servers=self.server.url)
        await writer.start()
        try:
            await writer.send_and_wait("handled", json.dumps({"n": -1, "pid": 0}).encode(), partition=0)
        finally:
            await writer.stop()
        marked = False

        async def follow() -> None:
            nonlocal marked
            while not marked:
                for record in await self._read():
                    if record["n"] == -1:
                        marked = True
                    else:
                        self.count(record)

        await asyncio.wait_for(follow(), 30)

    async def close(self) -> None:
        await self.reader.stop()


async def publish_numbered(server: KafkaServer, total: int) -> None:
    from fastapi_dapr.brokers.kafka import KafkaBroker

    publisher = KafkaBroker("pubsub", {"brokers": server.url, "authType": "none"}, app_id="publisher")
    await publisher.start()
    try:
        for n in range(total):
            await publisher.publish("jobs", numbered_event(n), {"partitionKey": str(n)})
    finally:
        await publisher.close()


async def test_a_replica_killed_with_messages_in_flight_then_restarted_loses_nothing(
    server: KafkaServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 1000
    log = await HandledLog(server).open()
    resources = resources_for(tmp_path, server)
    async with replicas(1, lambda: new_replica(server, resources)) as (replica,):
        first = await replica.start()
        publishing = asyncio.create_task(publish_numbered(server, total))  # the kill comes meanwhile
        await log.until(lambda: log.by_pid[first] >= 30)
        await replica.stop(signal.SIGKILL)
        await publishing
        await log.catch_up()
        handled_before = log.by_pid[first]
        assert handled_before < total  # killed with work left
        second = await replica.start()  # a new member of the group: from the committed offsets
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))  # every message, at least once
        assert log.duplicates <= BUFFERED  # only what was handled after the last commit
        assert log.by_pid[second] > 0
        await replica.stop()  # graceful: the last commits go out
    await log.close()
    fault_report(restarted_line(total, handled_before, log.duplicates))


async def test_two_replicas_share_a_topic_and_one_killed_loses_nothing(
    server: KafkaServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 1000
    log = await HandledLog(server).open()
    resources = resources_for(tmp_path, server)
    async with replicas(2, lambda: new_replica(server, resources)) as (victim, survivor):
        doomed, lasting = await victim.start(), await survivor.start()
        publishing = asyncio.create_task(publish_numbered(server, total))  # the kill comes meanwhile
        await log.until(lambda: log.by_pid[doomed] >= 20 and log.by_pid[lasting] >= 20)  # shared
        await victim.stop(signal.SIGKILL)
        await publishing
        await log.catch_up()
        handled_before = log.by_pid[doomed]
        assert handled_before < total / 2  # killed with its share of the work left
        # The survivor takes the dead one's partitions once its session times out (6 s here).
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))
        assert log.by_pid[doomed] == handled_before  # nothing more from the dead one
        assert log.duplicates <= BUFFERED
        await survivor.stop()
    await log.close()
    fault_report(survived_line(total, handled_before, log.duplicates))
