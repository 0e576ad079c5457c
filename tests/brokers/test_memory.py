"""The broker contract (tests/brokers/contract.py) against `pubsub.in-memory`."""

from __future__ import annotations

import pytest

from fastapi_dapr.brokers import Broker
from fastapi_dapr.brokers.memory import MemoryBroker

from .contract import BrokerContract, OpenBroker


class TestMemoryBroker(BrokerContract):
    instances_share = False  # its messages live in one process: its replicas are one instance
    # It does all its work in the call that publishes or settles, nothing in the background:
    # what it would deliver is queued before nothing_comes receives, and comes at once.
    quiet = 0.05

    @pytest.fixture
    def open_broker(self) -> OpenBroker:
        async def open_broker(**metadata: str) -> Broker:
            broker = MemoryBroker("pubsub", metadata, app_id="app")
            await broker.start()
            return broker

        return open_broker
