"""A `dapr.ext.grpc.App` (the official SDK's AppCallback server), run in a process of its own behind
`fastapi-dapr sidecar --app-protocol grpc` (tests/grpc/test_app_channel.py).

It prints `grpc ext app: listening on P` just before it listens on APP_PORT, and one line
`record {...}` (JSON) for every call it gets, which the test reads from its output:

- pubsub/orders (the default route), pubsub/widgets (a rule: `event.data.size == "big"`,
  handler `big`), pubsub/flaky (RETRY on an event's first attempt), pubsub/poison (DROP,
  dead-letter topic poison-dead), pubsub/poison-dead, pubsub/slow (takes a second);
- methods `echo` (answers what it got, as JSON, with a header `x-app: yes`), `fail`
  (raises: the SDK answers UNKNOWN) and `slow` (takes a second).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from dapr.clients.grpc._request import InvokeMethodRequest
from dapr.clients.grpc._response import InvokeMethodResponse, TopicEventResponse
from dapr.ext.grpc import App, Rule, SubscriptionMessage

app = App()
_lock = threading.Lock()
_attempts: dict[str, int] = {}


def record(kind: str, **fields: Any) -> None:
    print("record " + json.dumps({"kind": kind, **fields}, sort_keys=True), flush=True)


def _event(kind: str, event: SubscriptionMessage, **extra: Any) -> None:
    data = event.data()
    record(
        kind,
        id=event.id(),
        topic=event.topic(),
        pubsub=event.pubsub_name(),
        type=event.type(),
        source=event.source(),
        content_type=event.data_content_type(),
        data=data if data is not None else event.raw_data().decode("utf-8", errors="replace"),
        extensions=event.extensions(),
        metadata=event.metadata(),
        **extra,
    )


@app.subscribe("pubsub", "orders")
def orders(event: SubscriptionMessage) -> None:
    _event("orders", event)


@app.subscribe("pubsub", "widgets", rule=Rule('event.data.size == "big"', 1))
def big(event: SubscriptionMessage) -> None:
    _event("big", event)


@app.subscribe("pubsub", "flaky")
def flaky(event: SubscriptionMessage) -> TopicEventResponse:
    with _lock:
        attempt = _attempts[event.id()] = _attempts.get(event.id(), 0) + 1
    if attempt == 1:
        record("flaky-retry", id=event.id())
        return TopicEventResponse("retry")
    _event("flaky", event, attempt=attempt)
    return TopicEventResponse("success")


@app.subscribe("pubsub", "poison", dead_letter_topic="poison-dead")
def poison(event: SubscriptionMessage) -> TopicEventResponse:
    _event("poison", event)
    return TopicEventResponse("drop")


@app.subscribe("pubsub", "poison-dead")
def dead_letters(event: SubscriptionMessage) -> None:
    _event("dead-letters", event)


@app.subscribe("pubsub", "slow")
def slow(event: SubscriptionMessage) -> None:
    record("slow-delivery-start")
    time.sleep(1)
    record("slow-delivery-done")


@app.method("echo")
def echo(request: InvokeMethodRequest) -> InvokeMethodResponse:
    metadata = {key: values[0] for key, values in request.metadata.items()}
    record("echo", data=request.text(), content_type=request.content_type, metadata=metadata)
    answer = {
        "data": request.text(),
        "content_type": request.content_type,
        "token": metadata.get("dapr-api-token"),
    }
    response = InvokeMethodResponse(json.dumps(answer), "application/json")
    response.headers = (("x-app", "yes"),)
    return response


@app.method("fail")
def fail(request: InvokeMethodRequest) -> str:
    raise ValueError("the fail method fails")


@app.method("slow")
def slow_method(request: InvokeMethodRequest) -> str:
    record("slow-invoke-start")
    time.sleep(1)
    record("slow-invoke-done")
    return json.dumps("slow answer")


if __name__ == "__main__":
    port = int(os.environ["APP_PORT"])
    print(f"grpc ext app: listening on {port}", flush=True)
    app.run(port, listen_address="127.0.0.1")
