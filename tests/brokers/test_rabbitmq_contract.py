"""The broker contract (tests/brokers/contract.py) against `pubsub.rabbitmq`, on a rabbitmq-server
of its own (in CI a missing rabbitmq-server fails the tests instead of skipping them).

One server for the module (a RabbitMQ takes seconds to boot), and a virtual host of its own
for each test: each test's broker starts on an empty RabbitMQ, as on a server of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastapi_dapr.brokers import Broker

from ..rabbitmq_server import RabbitMQServer, shared_rabbitmq_server
from .contract import BrokerContract, OpenBroker

pytest.importorskip("aio_pika", reason="the rabbitmq extra is not installed")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.process]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    with shared_rabbitmq_server(tmp_path_factory.mktemp("rabbitmq"), vhosts=40) as started:
        yield started


class TestRabbitMQBroker(BrokerContract):
    instances_share = True  # replicas, on any host, consume the same queues

    @pytest.fixture
    def open_broker(self, server: RabbitMQServer) -> OpenBroker:
        from fastapi_dapr.brokers.rabbitmq import RabbitMQBroker

        url = server.url(server.next_vhost())

        async def open_broker(**metadata: str) -> Broker:
            broker = RabbitMQBroker("pubsub", {"connectionString": url, **metadata}, app_id="app")
            await broker.start()
            return broker

        return open_broker
