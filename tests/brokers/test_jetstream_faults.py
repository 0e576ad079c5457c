"""`pubsub.jetstream` under faults, each on a nats-server of its own: the server restarted,
crashed (SIGKILL) and paused under load, replicas killed (SIGKILL) with messages in flight,
a handler failing its first attempts. Zero messages lost; the duplicates are counted and
reported (at least once, not exactly once).

The streams have file storage (the default), as a user's would; the components a short
`ackWait`, so that what a killed replica held comes again within the test.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.testing import DaprTest

from ..nats_server import NatsServer, add_stream, nats_server
from .faults import Replica, Tally, numbered_event, paused, replicas, run_fault, survived_line

nats = pytest.importorskip("nats", reason="the nats extra is not installed")

pytestmark = [pytest.mark.nats, pytest.mark.process]

MAX_ACK_PENDING = 20
FAST = (
    "  - name: ackWait\n    value: 2s\n"
    f"  - name: maxAckPending\n    value: '{MAX_ACK_PENDING}'\n"
    "  - name: concurrencyMode\n    value: parallel\n"
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with nats_server(tmp_path) as started:
        for name, subject in (("LOAD", "load"), ("JOBS", "jobs"), ("HANDLED", "handled")):
            await add_stream(started.url, name, [subject])
        yield started


def resources_for(folder: Path, server: NatsServer, extra: str = FAST) -> Path:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.jetstream\n  version: v1\n  metadata:\n"
        f"  - name: natsURL\n    value: {server.url}\n" + extra
    )
    return resources


async def consumer_info(server: NatsServer, durable: str, stream: str = "JOBS") -> dict[str, Any]:
    client = await nats.connect(server.url)
    try:
        answer = await client.request(f"$JS.API.CONSUMER.INFO.{stream}.{durable}", b"", timeout=5)
    finally:
        await client.close()
    info: dict[str, Any] = json.loads(answer.data)
    return info


# -- the server restarted, crashed or paused while an app publishes and consumes -----------------


def new_replica(server: NatsServer, resources: Path) -> Replica:
    return Replica("jetstream", "FASTAPI_DAPR_TEST_NATS", server.url, resources)


def app_on(folder: Path, server: NatsServer) -> tuple[FastAPI, Dapr]:
    app = FastAPI()
    return app, Dapr(app, app_id="checkout", resources_path=resources_for(folder, server))


async def test_nothing_is_lost_when_nats_restarts_under_load(
    server: NatsServer, tmp_path: Path, fault_report: Any
) -> None:
    app, dapr = app_on(tmp_path, server)
    await run_fault(app, dapr, server.restart, fault_report)


async def test_nothing_is_lost_when_nats_crashes_under_load(
    server: NatsServer, tmp_path: Path, fault_report: Any
) -> None:
    # SIGKILL: what the stream acknowledged was written to its file store (the operating
    # system keeps what a killed process wrote); what it had not was refused, and published again.
    app, dapr = app_on(tmp_path, server)
    await run_fault(app, dapr, server.crash, fault_report)


async def test_a_paused_nats_is_waited_for_and_nothing_is_lost(
    server: NatsServer, tmp_path: Path, fault_report: Any
) -> None:
    app, dapr = app_on(tmp_path, server)

    # Paused longer than ackWait (2s).
    await run_fault(app, dapr, paused(server, 3.0), fault_report)


# -- replicas in processes of their own, killed with SIGKILL -------------------------------------


class HandledLog(Tally):
    """The `HANDLED` stream the replicas write, read in order: how often each message was
    handled, by whom."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client
        self.read_up_to = 0  # the stream sequence of the last record read
        self._changed = asyncio.Condition()

    @classmethod
    async def open(cls, server: NatsServer) -> HandledLog:
        log = cls(await nats.connect(server.url))
        await log.client.jetstream().subscribe("handled", ordered_consumer=True, cb=log._on_record)
        return log

    async def _on_record(self, msg: Any) -> None:
        record = json.loads(msg.data)
        async with self._changed:
            self.count(record)
            self.read_up_to = msg.metadata.sequence.stream
            self._changed.notify_all()

    async def until(self, done: Callable[[], bool], timeout: float = 60) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(done), timeout)

    async def catch_up(self) -> None:
        """Read all that is in the stream now (what a killed replica wrote before it died)."""
        last = (await self.client.jetstream().stream_info("HANDLED")).state.last_seq
        await self.until(lambda: self.read_up_to >= last)

    async def close(self) -> None:
        await self.client.close()


async def publish_numbered(server: NatsServer, total: int) -> None:
    from fastapi_dapr.brokers.jetstream import JetStreamBroker

    publisher = JetStreamBroker("pubsub", {"natsURL": server.url}, app_id="publisher")
    await publisher.start()
    try:
        for n in range(total):
            await publisher.publish("jobs", numbered_event(n), {})
    finally:
        await publisher.close()


async def test_a_replica_killed_with_messages_in_flight_then_restarted_loses_nothing(
    server: NatsServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 1000  # 2.5 s of work at 20 in flight: the kill comes with maxAckPending full
    log = await HandledLog.open(server)
    resources = resources_for(tmp_path, server)
    async with replicas(1, lambda: new_replica(server, resources)) as (replica,):
        first = await replica.start()  # its consumer is made: what is published next waits for it
        await publish_numbered(server, total)
        await log.until(lambda: log.by_pid[first] >= 30)
        await replica.stop(signal.SIGKILL)
        in_flight = (await consumer_info(server, "checkout-jobs"))["num_ack_pending"]
        assert in_flight > 0  # killed while holding messages (handled, or being handled)
        await log.catch_up()
        handled_before = log.by_pid[first]
        second = await replica.start()  # a new process: the same durable consumer
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))  # every message, at least once
        # Only what it held unacknowledged at the kill can have been handled twice.
        assert log.duplicates <= in_flight <= MAX_ACK_PENDING
        assert log.by_pid[second] > 0
        await replica.stop()  # graceful: the last acks go out
    info = await consumer_info(server, "checkout-jobs")
    await log.close()
    assert (info["num_ack_pending"], info["num_pending"]) == (0, 0)
    fault_report(
        f"{total} messages; {handled_before} handled before the kill, {in_flight} unacknowledged at it; "
        f"{log.duplicates} handled twice"
    )


async def test_two_replicas_share_a_topic_and_one_killed_loses_nothing(
    server: NatsServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 1000
    log = await HandledLog.open(server)
    resources = resources_for(tmp_path, server)
    async with replicas(2, lambda: new_replica(server, resources)) as (victim, survivor):
        doomed, lasting = await victim.start(), await survivor.start()
        await publish_numbered(server, total)
        await log.until(lambda: log.by_pid[doomed] >= 20 and log.by_pid[lasting] >= 20)  # shared
        await victim.stop(signal.SIGKILL)
        in_flight = (await consumer_info(server, "checkout-jobs"))["num_ack_pending"]  # both replicas'
        await log.catch_up()  # what it recorded before it died, read
        handled_before = log.by_pid[doomed]
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))
        assert log.by_pid[doomed] == handled_before  # nothing more from the dead one
        assert log.duplicates <= in_flight  # what it held unacknowledged, handled by the survivor
        await survivor.stop()
    info = await consumer_info(server, "checkout-jobs")
    await log.close()
    assert (info["num_ack_pending"], info["num_pending"]) == (0, 0)
    fault_report(survived_line(total, handled_before, log.duplicates))


# -- a handler that fails its first attempts ------------------------------------------------------


async def test_a_handler_failing_its_first_attempts_loses_nothing(
    server: NatsServer, tmp_path: Path, fault_report: Any
) -> None:
    """Every message fails its first two deliveries (the engine gives up, and the message comes
    back after ackWait through the server): each is handled in the end."""
    from fastapi_dapr import RetryPolicy

    extra = "  - name: ackWait\n    value: 300ms\n  - name: concurrencyMode\n    value: parallel\n"
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=resources_for(tmp_path, server, extra))
    dapr.retry = RetryPolicy(policy="constant", duration=0.01, max_retries=0)  # given up at once
    attempts: collections.Counter[int] = collections.Counter()
    handled: collections.Counter[int] = collections.Counter()
    done = asyncio.Event()
    total = 100

    @dapr.subscribe("pubsub", "load")
    async def on_load(event: CloudEvent[dict[str, int]]) -> None:
        n = event.data["n"]
        attempts[n] += 1
        if attempts[n] <= 2:
            raise RuntimeError("not yet")
        handled[n] += 1
        if len(handled) == total:
            done.set()

    async with DaprTest(app):
        for n in range(total):
            await dapr.publish("pubsub", "load", {"n": n})
        await asyncio.wait_for(done.wait(), 60)
    assert sorted(handled) == list(range(total))
    assert set(attempts.values()) == {3}
    duplicates = sum(count - 1 for count in handled.values())
    assert duplicates == 0
    fault_report(f"{total} messages, each failed twice then handled; {duplicates} handled twice")
