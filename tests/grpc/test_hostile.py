"""The gRPC API against a hostile or careless client, in process: a raw `grpc.aio` channel (not
the SDK) sending what no SDK would (bad tokens, odd metadata, abandoned streams, floods of
answers), to check that each gets daprd's error, or is cleaned up, and never a hang, a leak
or a Python exception's text."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2, pubsub_pb2
from fastapi import FastAPI, Request

from fastapi_dapr import Dapr
from fastapi_dapr.testing import DaprTest

TOKEN = "s3cret-token"
AUTH = (("dapr-api-token", TOKEN),)


class Sidecar:
    """An app with the embedded sidecar's gRPC API, in this process, and a raw client of it."""

    def __init__(self, dapr: Dapr, test: DaprTest, channel: Any) -> None:
        self.dapr = dapr
        self.test = test
        self.channel = channel
        self.stub = dapr_pb2_grpc.DaprStub(channel)

    @property
    def runtime(self) -> Any:
        return self.dapr.backend.running()  # type: ignore[attr-defined]

    @property
    def api(self) -> Any:
        """The SidecarAPI the gRPC server serves."""
        return self.dapr.backend.sidecar  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def sidecar(token: str | None = TOKEN, **settings: Any) -> AsyncIterator[Sidecar]:
    app = FastAPI()

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def echo(request: Request, rest: str) -> Any:
        return {"path": request.url.path, "headers": dict(request.headers)}

    dapr = Dapr(app, app_id="hostile", grpc_port=0, api_token=token, **settings)
    async with DaprTest(app) as test:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{dapr.grpc_port}")
        try:
            yield Sidecar(dapr, test, channel)
        finally:
            await channel.close()


def initial(pubsub: str = "pubsub", topic: str = "orders", **fields: Any) -> Any:
    return pubsub_pb2.SubscribeTopicEventsRequestAlpha1(
        initial_request=pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1(
            pubsub_name=pubsub, topic=topic, **fields
        )
    )


async def streaming_topics(side: Sidecar) -> list[str]:
    answer = await side.stub.GetMetadata(metadata_pb2.GetMetadataRequest(), metadata=AUTH)
    return [s.topic for s in answer.subscriptions if s.type == metadata_pb2.STREAMING]


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def publish(side: Sidecar, topic: str, count: int, size: int = 10) -> None:
    for _ in range(count):
        answer = await side.test.client.post(
            f"/v1.0/publish/pubsub/{topic}",
            content=b"x" * size,
            headers={"dapr-api-token": TOKEN, "content-type": "application/octet-stream"},
        )
        assert answer.status_code == 204


# -- streaming subscriptions --------------------------------------------------------------------


async def test_a_client_that_reads_nothing_does_not_hold_the_stop_past_its_grace() -> None:
    from fastapi_dapr.sidecar.grpc_api.server import GrpcServer

    async with sidecar() as side:
        server = GrpcServer(side.api)  # a second server of the same runtime, stopped here
        async with grpc.aio.insecure_channel(f"127.0.0.1:{await server.start(0)}") as channel:
            call = dapr_pb2_grpc.DaprStub(channel).SubscribeTopicEventsAlpha1(metadata=AUTH)
            await call.write(initial(topic="big"))
            await call.read()
            await publish(side, "big", 20, size=1_000_000)  # more than the flow control lets through
            await eventually(lambda: _true(side.runtime.dynamic.in_flight() == 20))
            began = time.monotonic()
            await server.stop(1.0)
            assert time.monotonic() - began < 2.0
            # Stopped: the subscription is gone, what it held handed back.
            assert (side.runtime.dynamic.running, server.service.streams.open) == ([], set())
            assert await streaming_topics(side) == []


async def _true(value: bool) -> bool:
    return value


async def test_a_stream_still_without_its_initial_request_ends_at_the_stop() -> None:
    """daprd answers such a stream "api server closed" when its server closes: it holds no grace."""
    from fastapi_dapr.sidecar.grpc_api.server import GrpcServer

    async with sidecar() as side:
        server = GrpcServer(side.api)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{await server.start(0)}") as channel:
            call = dapr_pb2_grpc.DaprStub(channel).SubscribeTopicEventsAlpha1(metadata=AUTH)
            await eventually(lambda: _true(len(server.service.streams.starting) == 1))
            began = time.monotonic()
            await server.stop(3.0)
            assert time.monotonic() - began < 1.0
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call.read()
            assert (error.value.code(), error.value.details()) == (
                grpc.StatusCode.UNKNOWN,
                "api server closed",
            )


# -- requests with every field left unset -------------------------------------------------------


def _rpcs() -> list[Any]:
    from dapr.proto.runtime.v1 import dapr_pb2

    methods = dapr_pb2.DESCRIPTOR.services_by_name["Dapr"].methods
    return [method for method in methods if method.name != "Shutdown"]


async def _call_empty(channel: Any, method: Any, metadata: Any = AUTH) -> Any:
    """Call `method` with one message of its request type, every field unset: its answers."""
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(method.input_type)
    answer = message_factory.GetMessageClass(method.output_type)
    path = f"/dapr.proto.runtime.v1.Dapr/{method.name}"
    codec = {"request_serializer": request.SerializeToString, "response_deserializer": answer.FromString}
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path, **codec)(metadata=metadata)
        await call.write(request())
        await call.done_writing()
        return [item async for item in call]
    if method.server_streaming:
        return [item async for item in channel.unary_stream(path, **codec)(request(), metadata=metadata)]
    if method.client_streaming:
        return await channel.stream_unary(path, **codec)(iter([request()]), metadata=metadata)
    return await channel.unary_unary(path, **codec)(request(), metadata=metadata)


async def test_no_rpc_answers_a_python_exception_for_a_request_with_nothing_set() -> None:
    async with sidecar() as side:
        refused = []
        for method in _rpcs():
            try:
                await asyncio.wait_for(_call_empty(side.channel, method), 10)
            except grpc.aio.AioRpcError as error:
                refused.append((method.name, error.details()))
        assert [(name, text) for name, text in refused if text.startswith("Unexpected <class")] == []
        assert len(refused) > 80  # nearly all: no component of theirs


async def test_execute_state_transaction_names_its_store_as_daprd() -> None:
    from dapr.proto.runtime.v1 import state_pb2

    async with sidecar() as side:
        request = state_pb2.ExecuteStateTransactionRequest(storeName="orders")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await side.stub.ExecuteStateTransaction(request, metadata=AUTH)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.details() == "state store orders is not configured"


async def test_a_handlers_own_failure_is_an_internal_error_without_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi_dapr.sidecar.grpc_api import info

    async def broken(*args: Any) -> Any:
        raise AttributeError("secret internals")

    monkeypatch.setattr(info, "get_metadata", broken)
    async with sidecar() as side:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await side.stub.GetMetadata(metadata_pb2.GetMetadataRequest(), metadata=AUTH)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert "secret internals" not in error.value.details()
        assert "AttributeError" not in error.value.details()


# -- what is not a protobuf message of the request's type ----------------------------------------

BAD_UTF8 = b"\x0a\x02\xff\xfe\x12\x01t"  # field 1 (a string: pubsub_name) is not UTF-8
CORRUPT = b"\xff\xff\xff\xff"


def _raw(channel: Any, name: str, streaming: bool = False) -> Any:
    kind = channel.stream_stream if streaming else channel.unary_unary
    return kind(
        f"/dapr.proto.runtime.v1.Dapr/{name}",
        request_serializer=lambda raw: raw,
        response_deserializer=pubsub_pb2.SubscribeTopicEventsResponseAlpha1.FromString,
    )


@pytest.mark.parametrize("raw", [BAD_UTF8, CORRUPT])
async def test_an_undecodable_request_is_grpc_gos_internal_error(raw: bytes) -> None:
    async with sidecar() as side:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _raw(side.channel, "PublishEvent")(raw, metadata=AUTH)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details().startswith("grpc: error unmarshalling request: ")
        assert "<class" not in error.value.details()


async def test_an_undecodable_message_on_a_stream_ends_it_with_grpc_gos_error() -> None:
    async with sidecar() as side:
        first = _raw(side.channel, "SubscribeTopicEventsAlpha1", streaming=True)(metadata=AUTH)
        await first.write(CORRUPT)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await first.read()
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details().startswith("grpc: failed to unmarshal the received message: ")

        later = _raw(side.channel, "SubscribeTopicEventsAlpha1", streaming=True)(metadata=AUTH)
        await later.write(initial().SerializeToString())
        await later.read()
        await later.write(BAD_UTF8)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await later.read()
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details().startswith("grpc: failed to unmarshal the received message: ")
        await eventually(lambda: _true(side.runtime.dynamic.running == []))


# -- the call's metadata -------------------------------------------------------------------------


async def test_the_calls_metadata_is_held_to_the_http_apis_header_limit_every_time() -> None:
    """grpc's own default refuses between 8 and 16 KiB at random; the limit is the HTTP API's."""
    async with sidecar() as side:
        limit = side.api.max_header_size
        within = (*AUTH, ("x-big", "v" * (limit - 1024)))
        for _ in range(10):
            await side.stub.GetMetadata(metadata_pb2.GetMetadataRequest(), metadata=within)
        over = (*AUTH, ("x-big", "v" * (limit + 1024)))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await side.stub.GetMetadata(metadata_pb2.GetMetadataRequest(), metadata=over)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- the guard -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ((), "missing api token in request metadata"),
        ((("dapr-api-token", ""),), "authentication error: api token mismatch"),
        ((("dapr-api-token", TOKEN[:-1]),), "authentication error: api token mismatch"),
        ((("dapr-api-token", TOKEN + "x"),), "authentication error: api token mismatch"),
        ((("dapr-api-token-bin", TOKEN.encode()),), "missing api token in request metadata"),
        (
            (("dapr-api-token", "wrong"), ("dapr-api-token", TOKEN)),
            "authentication error: api token mismatch",
        ),
    ],
)
async def test_every_kind_of_rpc_refuses_a_call_without_the_token(metadata: Any, detail: str) -> None:
    """daprd reads the first `dapr-api-token` value only; a binary key is another key."""
    from google.rpc import error_details_pb2, status_pb2

    async with sidecar() as side:
        for method in _rpcs():
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await asyncio.wait_for(_call_empty(side.channel, method, metadata), 10)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.name
            trailer = dict(error.value.trailing_metadata() or ())["grpc-status-details-bin"]
            info = error_details_pb2.ErrorInfo()
            assert status_pb2.Status.FromString(trailer).details[0].Unpack(info)
            assert info.metadata["http.error_message"] == detail


async def test_the_first_token_given_is_the_one_checked() -> None:
    async with sidecar() as side:
        twice = (("dapr-api-token", TOKEN), ("dapr-api-token", "wrong"))
        answer = await side.stub.GetMetadata(metadata_pb2.GetMetadataRequest(), metadata=twice)
        assert answer.id == "hostile"


async def test_the_callers_token_reaches_neither_a_target_nor_an_event() -> None:
    from dapr.proto.common.v1 import common_pb2
    from dapr.proto.runtime.v1 import invoke_pb2

    from fastapi_dapr import InvocationSettings

    seen: list[bytes] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    remote = await asyncio.start_server(target, "127.0.0.1", 0)
    apps = {"other": f"http://127.0.0.1:{remote.sockets[0].getsockname()[1]}"}
    async with remote, sidecar(invocation=InvocationSettings(apps=apps)) as side:
        for app_id in ("hostile", "other"):
            message = common_pb2.InvokeRequest(method="x", http_extension=common_pb2.HTTPExtension(verb=1))
            request = invoke_pb2.InvokeServiceRequest(id=app_id, message=message)
            answer = await side.stub.InvokeService(request, metadata=AUTH)
            assert TOKEN not in answer.data.value.decode()  # the own app echoes its headers
        assert len(seen) == 1
        assert TOKEN.encode() not in seen[0]

        call = side.stub.SubscribeTopicEventsAlpha1(metadata=AUTH)
        await call.write(initial(topic="tokens"))
        await call.read()
        published = pubsub_pb2.PublishEventRequest(pubsub_name="pubsub", topic="tokens", data=b"{}")
        await side.stub.PublishEvent(published, metadata=(*AUTH, ("traceparent", "x")))
        event = (await call.read()).event_message
        assert TOKEN.encode() not in event.SerializeToString()
        call.cancel()


async def test_abandoned_streams_are_noticed_and_cleaned_up() -> None:
    async with sidecar() as side:
        calls = []
        for n in range(30):
            call = side.stub.SubscribeTopicEventsAlpha1(metadata=AUTH)
            await call.write(initial(topic=f"t{n}"))
            await call.read()
            calls.append(call)
        assert len(await streaming_topics(side)) == 30
        for call in calls[:10]:
            call.cancel()
        for call in calls[10:20]:
            await call.done_writing()  # and reads no more
        await side.channel.close()  # the last ten: the connection goes
        side.channel = grpc.aio.insecure_channel(f"127.0.0.1:{side.dapr.grpc_port}")
        side.stub = dapr_pb2_grpc.DaprStub(side.channel)
        await eventually(lambda: _true(side.runtime.dynamic.running == []))
        assert await streaming_topics(side) == []
        assert not any(task.get_name().startswith("fastapi-dapr stream") for task in asyncio.all_tasks())


async def test_unanswered_messages_stay_in_flight_up_to_the_concurrency_unknown_answers_ignored() -> None:
    from dapr.proto.runtime.v1 import appcallback_pb2

    def processed(event_id: str) -> Any:
        answer = pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1(
            id=event_id, status=appcallback_pb2.TopicEventResponse(status=0)
        )
        return pubsub_pb2.SubscribeTopicEventsRequestAlpha1(event_processed=answer)

    async with sidecar() as side:
        concurrency = side.runtime.concurrency
        call = side.stub.SubscribeTopicEventsAlpha1(metadata=AUTH)
        await call.write(initial())
        await call.read()
        await publish(side, "orders", concurrency + 20)
        events = [(await call.read()).event_message for _ in range(concurrency)]
        await eventually(lambda: _true(side.runtime.dynamic.in_flight() == concurrency))
        for n in range(500):
            await call.write(processed(f"nobody-{n}"))
        await call.write(processed(events[0].id))  # the stream still works: the next one comes
        assert (await call.read()).event_message.id not in {event.id for event in events}
        assert side.runtime.dynamic.in_flight() == concurrency
        call.cancel()


async def test_a_stream_ended_before_its_initial_request_is_daprds_eof() -> None:
    async with sidecar() as side:
        call = side.stub.SubscribeTopicEventsAlpha1(metadata=AUTH)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        assert (error.value.code(), error.value.details()) == (grpc.StatusCode.UNKNOWN, "EOF")
        assert side.runtime.dynamic.running == []
