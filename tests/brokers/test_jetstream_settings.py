"""`pubsub.jetstream`'s settings, read as daprd reads them, and its connection: an unreachable
server, one without JetStream, token authentication and mutual TLS, on nats-servers of their own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from fastapi_dapr.brokers import Broker, BrokerError

from ..nats_server import NatsServer, nats_server
from .test_jetstream import WAIT, open_broker

pytest.importorskip("nats", reason="the nats extra is not installed")

pytestmark = [pytest.mark.nats, pytest.mark.process]


def test_bad_metadata_stops_the_start_naming_the_field() -> None:
    from fastapi_dapr.brokers.jetstream import JetStreamBroker

    def make(**metadata: str) -> Broker:
        return JetStreamBroker("p", metadata, app_id="a")

    with pytest.raises(ValueError, match="natsURL is required"):
        make()
    cases = {
        "deliverPolicy": ("first", "deliverPolicy first is not one of: all, last, new, sequence, time"),
        "ackWait": ("soon", "ackWait is not a duration"),
        "maxDeliver": ("ten", "maxDeliver must be an integer"),
        "startSequence": ("-1", "startSequence must be from 0"),
        "concurrencyMode": ("many", "concurrencyMode must be single or parallel"),
        "backOff": ("1s, later", "backOff is not a duration"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            make(natsURL="nats://x:1", **{key: value})
    with pytest.raises(ValueError, match="jwt and seedKey go together"):
        make(natsURL="nats://x:1", jwt="eyJ")
    with pytest.raises(ValueError, match="tls_client_cert and tls_client_key go together"):
        make(natsURL="nats://x:1", tls_client_cert="/c.pem")
    # dapr/kit's readings: a duration in integer seconds, booleans as truthy words.
    settings = make(natsURL="nats://x:1", ackWait="3", memoryStorage="yes", startTime="1629328511").settings  # type: ignore[attr-defined]
    config = settings.consumer_config("t", "d", "", "_INBOX.d")
    assert (config["ack_wait"], config["mem_storage"], config["opt_start_time"]) == (
        3_000_000_000, True, "2021-08-18T23:15:11Z",
    )  # fmt: skip


async def test_an_unreachable_server_or_one_without_jetstream_is_named(tmp_path: Path) -> None:
    from fastapi_dapr.brokers.jetstream import JetStreamBroker

    from ..nats_server import _free_port

    unreachable = JetStreamBroker("p", {"natsURL": f"nats://127.0.0.1:{_free_port()}"}, app_id="a")
    with pytest.raises(BrokerError, match=r"cannot reach NATS at nats://127\.0\.0\.1:"):
        await asyncio.wait_for(unreachable.start(), WAIT)
    plain = NatsServer(tmp_path)
    plain.argv.remove("-js")
    await plain.start()
    try:
        broker = JetStreamBroker("p", {"natsURL": plain.url}, app_id="a")
        with pytest.raises(BrokerError, match="JetStream is not available"):
            await broker.start()
    finally:
        await plain.stop()


# -- authentication and TLS ----------------------------------------------------------------------


async def test_a_token_is_sent_and_a_missing_one_refused(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    async with nats_server(tmp_path, token=token) as server:
        broker = await open_broker(server, token=token)
        await broker.close()
        with pytest.raises(BrokerError, match="cannot reach NATS"):
            await open_broker(server)


async def test_mutual_tls_with_the_client_certificate_as_pem_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ..certs import CertificateAuthority

    ca = CertificateAuthority()
    server_pair, client_pair = ca.issue("localhost", server=True), ca.issue("checkout", server=False)
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "client", "client-key")}
    for name, text in zip(
        files,
        (
            ca.pem,
            server_pair.certificate,
            server_pair.private_key,
            client_pair.certificate,
            client_pair.private_key,
        ),
        strict=True,
    ):
        files[name].write_text(text)
    monkeypatch.setenv("SSL_CERT_FILE", str(files["ca"]))  # as for daprd: the system's trust store
    tls = (files["cert"], files["key"], files["ca"])
    async with nats_server(tmp_path, tls=tls, client_certificates=True) as server:
        for cert, key in (
            (client_pair.certificate, client_pair.private_key),
            (str(files["client"]), str(files["client-key"])),
        ):
            broker = await open_broker(server, tls_client_cert=cert, tls_client_key=key)
            await broker.close()
        with pytest.raises(BrokerError, match="cannot reach NATS"):
            await open_broker(server)  # no certificate
