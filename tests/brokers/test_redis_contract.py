"""The broker contract (tests/brokers/contract.py) against `pubsub.redis`, on a redis-server
of its own (in CI a missing redis-server fails the tests instead of skipping them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastapi_dapr.brokers import Broker

from ..redis_server import redis_server
from .contract import BrokerContract, OpenBroker

pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")

pytestmark = pytest.mark.redis


class TestRedisBroker(BrokerContract):
    instances_share = True  # replicas, on any host, read the same streams

    @pytest.fixture
    async def open_broker(self, tmp_path: Path) -> AsyncIterator[OpenBroker]:
        from fastapi_dapr.brokers.redis import RedisBroker

        async with redis_server(tmp_path) as server:

            async def open_broker(**metadata: str) -> Broker:
                broker = RedisBroker("pubsub", {"redisHost": server.url, **metadata}, app_id="app")
                await broker.start()
                return broker

            yield open_broker
