"""The broker contract (tests/brokers/contract.py) against `pubsub.jetstream`, on a nats-server
of its own (in CI a missing nats-server fails the tests instead of skipping them).

The stream is the user's to make, as with daprd: one that takes every one-token subject,
which the contract's topics are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastapi_dapr.brokers import Broker

from ..nats_server import add_stream, nats_server
from .contract import BrokerContract, OpenBroker

pytest.importorskip("nats", reason="the nats extra is not installed")

pytestmark = [pytest.mark.nats, pytest.mark.process]


class TestJetStreamBroker(BrokerContract):
    instances_share = True  # replicas, on any host, share the durable consumers

    @pytest.fixture
    async def open_broker(self, tmp_path: Path) -> AsyncIterator[OpenBroker]:
        from fastapi_dapr.brokers.jetstream import JetStreamBroker

        async with nats_server(tmp_path) as server:
            await add_stream(server.url, "EVENTS", ["*"])

            async def open_broker(**metadata: str) -> Broker:
                # Parallel: the contract holds several deliveries unsettled at once, which
                # daprd's default (single: one at a time per subscription) does not hand out.
                metadata = {"natsURL": server.url, "concurrencyMode": "parallel", **metadata}
                broker = JetStreamBroker("pubsub", metadata, app_id="app")
                await broker.start()
                return broker

            yield open_broker
