"""`GET /dapr/subscribe`: what daprd reads to learn the app's subscriptions (reference 2.1)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from fastapi_dapr import BulkEntry, BulkSubscribe, CloudEvent, Dapr, DaprRouter, SubscriptionError


def listing(app: FastAPI) -> list[dict[str, Any]]:
    response = TestClient(app).get("/dapr/subscribe")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result: list[dict[str, Any]] = response.json()
    return result


def test_plain_subscription_uses_dapr_ext_fastapi_route() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout")

    @dapr.subscribe(pubsub="pubsub", topic="orders")
    async def on_order(event: CloudEvent) -> None: ...

    assert listing(app) == [{"pubsubname": "pubsub", "topic": "orders", "route": "/events/pubsub/orders"}]


def test_every_option_in_daprd_format() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe(
        "kafka",
        "orders",
        route="/orders",
        dead_letter_topic="orders-dead",
        metadata={"maxRetries": 3, "ordered": True, "group": "a"},
        raw_payload=True,
        bulk=BulkSubscribe(max_messages_count=10, max_await_duration_ms=250),
    )
    async def on_orders(entries: list[BulkEntry[bytes]]) -> None: ...

    assert listing(app) == [
        {
            "pubsubname": "kafka",
            "topic": "orders",
            "route": "/orders",
            "deadLetterTopic": "orders-dead",
            # daprd rejects the whole answer if one metadata value is not a string.
            "metadata": {"maxRetries": "3", "ordered": "true", "group": "a", "rawPayload": "true"},
            "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 250},
        }
    ]


def test_bulk_true_uses_daprd_defaults() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders", bulk=True)
    async def on_orders() -> None: ...

    (item,) = listing(app)
    assert item["bulkSubscribe"] == {
        "enabled": True,
        "maxMessagesCount": 100,
        "maxAwaitDurationMs": 1000,
    }


def test_metadata_values_that_are_not_scalars_are_refused() -> None:
    dapr = Dapr(FastAPI())
    with pytest.raises(SubscriptionError, match=r"metadata 'nested' must be a string"):

        @dapr.subscribe("pubsub", "orders", metadata={"nested": {"a": 1}})
        async def on_order() -> None: ...


def test_rules_in_priority_order_with_default() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "widgets", match='event.type == "late"')
    async def late() -> None: ...

    @dapr.subscribe("pubsub", "widgets")
    async def fallback() -> None: ...

    @dapr.subscribe("pubsub", "widgets", match='event.type == "first"', priority=1)
    async def first() -> None: ...

    @dapr.subscribe("pubsub", "widgets", match='event.type == "zero"', priority=0)
    async def zero() -> None: ...

    (item,) = listing(app)
    assert item == {
        "pubsubname": "pubsub",
        "topic": "widgets",
        "routes": {
            "rules": [
                {"match": 'event.type == "zero"', "path": "/events/pubsub/widgets/zero"},
                {"match": 'event.type == "first"', "path": "/events/pubsub/widgets/first"},
                {"match": 'event.type == "late"', "path": "/events/pubsub/widgets"},
            ],
            "default": "/events/pubsub/widgets/fallback",
        },
    }


def test_rules_without_default_have_no_default_key() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "widgets", match="event.data.big")
    async def big() -> None: ...

    (item,) = listing(app)
    assert item["routes"] == {"rules": [{"match": "event.data.big", "path": "/events/pubsub/widgets"}]}
    assert "route" not in item


def test_router_prefixes_apply_to_advertised_paths() -> None:
    app = FastAPI()
    Dapr(app)
    billing = DaprRouter(prefix="/billing")

    @billing.subscribe("pubsub", "invoices", match='event.type == "invoice.paid"')
    async def paid() -> None: ...

    @billing.subscribe("pubsub", "invoices")
    async def other() -> None: ...

    inner = DaprRouter(prefix="/inner")

    @inner.subscribe("pubsub", "refunds", route="/r")
    async def refund() -> None: ...

    billing.include_router(inner)
    app.include_router(billing, prefix="/v2")

    assert listing(app) == [
        {
            "pubsubname": "pubsub",
            "topic": "invoices",
            "routes": {
                "rules": [
                    {
                        "match": 'event.type == "invoice.paid"',
                        "path": "/v2/billing/events/pubsub/invoices",
                    }
                ],
                "default": "/v2/billing/events/pubsub/invoices/other",
            },
        },
        {"pubsubname": "pubsub", "topic": "refunds", "route": "/v2/billing/inner/r"},
    ]


def test_advertised_paths_are_served() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    router = DaprRouter(prefix="/billing")

    @router.subscribe("pubsub", "invoices", match="true")
    async def paid() -> None: ...

    @router.subscribe("pubsub", "invoices")
    async def other() -> None: ...

    @dapr.subscribe("pubsub", "orders")
    async def order() -> None: ...

    app.include_router(router)
    client = TestClient(app)
    paths = [rule["path"] for item in listing(app) for rule in item.get("routes", {}).get("rules", [])]
    paths += [item["routes"]["default"] if "routes" in item else item["route"] for item in listing(app)]
    assert len(paths) == 3
    for path in paths:
        answer = client.post(path, json={"specversion": "1.0", "id": "1", "data": None})
        assert answer.json() == {"status": "SUCCESS"}, path


def test_several_routers_and_plain_api_routers() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "a")
    async def on_a() -> None: ...

    first, second = DaprRouter(), DaprRouter(prefix="/second")

    @first.subscribe("pubsub", "b")
    async def on_b() -> None: ...

    @second.subscribe("other", "b")
    async def on_other_b() -> None: ...

    plain = APIRouter(prefix="/plain")
    plain.include_router(second)
    app.include_router(first)
    app.include_router(plain)

    assert [(i["pubsubname"], i["topic"], i["route"]) for i in listing(app)] == [
        ("pubsub", "a", "/events/pubsub/a"),
        ("pubsub", "b", "/events/pubsub/b"),
        ("other", "b", "/plain/second/events/other/b"),
    ]


def test_router_handlers_added_after_include_are_listed_when_served() -> None:
    # Recent FastAPI resolves included routers lazily, so a handler added after
    # include_router() is served, and a walk done at include time would miss it.
    # Older FastAPI copied routes at include time and never serves it: then it
    # must not be advertised either.
    app = FastAPI()
    Dapr(app)
    router = DaprRouter(prefix="/late")
    app.include_router(router)

    @router.subscribe("pubsub", "late")
    async def late() -> None: ...

    served = TestClient(app).post("/late/events/pubsub/late", json={"specversion": "1.0"})
    if served.status_code == 404:
        assert listing(app) == []
    else:
        assert served.json() == {"status": "SUCCESS"}
        assert listing(app) == [
            {"pubsubname": "pubsub", "topic": "late", "route": "/late/events/pubsub/late"}
        ]


def test_mounted_sub_app_routes_carry_the_mount_path() -> None:
    app = FastAPI()
    Dapr(app)
    sub = FastAPI()
    router = DaprRouter()

    @router.subscribe("pubsub", "mounted")
    async def mounted() -> None: ...

    sub.include_router(router)
    app.mount("/sub", sub)
    (item,) = listing(app)
    assert item["route"] == "/sub/events/pubsub/mounted"
    assert TestClient(app).post(item["route"], json={"specversion": "1.0", "data": 1}).json() == {
        "status": "SUCCESS"
    }


def test_decorator_returns_the_function_unchanged() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    router = DaprRouter()

    async def handler(event: CloudEvent) -> str:
        return "called"

    def plain(data: dict) -> int:  # type: ignore[type-arg]
        return 7

    assert dapr.subscribe("pubsub", "orders")(handler) is handler
    assert router.subscribe("pubsub", "orders")(plain) is plain
    assert plain({"a": 1}) == 7


async def test_decorated_coroutine_is_still_awaitable() -> None:
    dapr = Dapr(FastAPI())

    @dapr.subscribe("pubsub", "orders")
    async def handler(event: CloudEvent[int]) -> int:
        return event.data * 2

    assert await handler(CloudEvent[int](data=21)) == 42


def test_several_handlers_default_routes_are_unique() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "t", match="event.data == 1")
    async def one() -> None: ...

    @dapr.subscribe("pubsub", "t", match="event.data == 2")
    async def two() -> None: ...

    @dapr.subscribe("other", "t")
    async def elsewhere() -> None: ...

    items = listing(app)
    paths = [r["path"] for r in items[0]["routes"]["rules"]] + [items[1]["route"]]
    assert paths == ["/events/pubsub/t", "/events/pubsub/t/two", "/events/other/t"]


def test_topic_characters_that_a_path_cannot_hold() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "a/{b} c%")
    async def odd() -> None: ...

    (item,) = listing(app)
    assert item["topic"] == "a/{b} c%"
    assert item["route"] == "/events/pubsub/a/_b__c_"
    assert TestClient(app).post(item["route"], json={"specversion": "1.0", "data": 1}).json() == {
        "status": "SUCCESS"
    }


def test_duplicate_in_one_router_fails_at_decoration_naming_both() -> None:
    dapr = Dapr(FastAPI())

    @dapr.subscribe("pubsub", "orders")
    async def first() -> None: ...

    with pytest.raises(SubscriptionError) as info:

        @dapr.subscribe("pubsub", "orders", route="/elsewhere")
        async def second() -> None: ...

    assert "first" in str(info.value)
    assert "second" in str(info.value)


def test_duplicate_match_across_routers_fails_at_startup_naming_both() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    router = DaprRouter(prefix="/r")

    @dapr.subscribe("pubsub", "orders", match='event.type == "x"')
    async def on_app() -> None: ...

    @router.subscribe("pubsub", "orders", match='event.type == "x"')
    async def on_router() -> None: ...

    app.include_router(router)
    with pytest.raises(SubscriptionError) as info, TestClient(app):
        pass
    message = str(info.value)
    assert "on_app" in message
    assert "on_router" in message
    assert "/r/events/pubsub/orders" in message


def test_same_router_included_twice_is_a_duplicate() -> None:
    app = FastAPI()
    Dapr(app)
    router = DaprRouter()

    @router.subscribe("pubsub", "orders")
    async def handler() -> None: ...

    app.include_router(router, prefix="/a")
    app.include_router(router, prefix="/b")
    with pytest.raises(SubscriptionError, match="duplicate subscription"), TestClient(app):
        pass


def test_conflicting_dead_letter_topics_fail_at_startup() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead-1")
    async def one() -> None: ...

    @dapr.subscribe("pubsub", "orders", match="true", dead_letter_topic="dead-2")
    async def two() -> None: ...

    with pytest.raises(SubscriptionError, match="different dead_letter_topic"), TestClient(app):
        pass


def test_dead_letter_topic_set_on_one_handler_covers_the_topic() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def one() -> None: ...

    @dapr.subscribe("pubsub", "orders", match="true")
    async def two() -> None: ...

    (item,) = listing(app)
    assert item["deadLetterTopic"] == "dead"


def test_invalid_cel_match_fails_at_decoration() -> None:
    dapr = Dapr(FastAPI())
    with pytest.raises(SubscriptionError, match="not a valid CEL expression"):

        @dapr.subscribe("pubsub", "orders", match="event.type ==")
        async def broken() -> None: ...


def test_priority_without_match_is_refused() -> None:
    dapr = Dapr(FastAPI())
    with pytest.raises(SubscriptionError, match="priority only orders"):

        @dapr.subscribe("pubsub", "orders", priority=1)
        async def handler() -> None: ...


def test_second_dapr_instance_on_one_app_is_refused() -> None:
    app = FastAPI()
    Dapr(app, app_id="one")
    with pytest.raises(RuntimeError, match="already has Dapr"):
        Dapr(app, app_id="two")


def test_user_lifespan_still_runs() -> None:
    events: list[str] = []
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        events.append("start")
        yield {"ready": True}
        events.append("stop")

    app = FastAPI(lifespan=lifespan)
    Dapr(app)
    with TestClient(app):
        assert events == ["start"]
    assert events == ["start", "stop"]


def test_no_subscriptions_is_an_empty_list() -> None:
    app = FastAPI()
    Dapr(app)
    assert listing(app) == []


def test_subscribe_endpoint_is_not_in_openapi() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> None: ...

    assert TestClient(app).get("/openapi.json").json()["paths"] == {}


def test_two_handlers_on_one_path_across_routers_fail_at_startup() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    router = DaprRouter()  # no prefix: its default route is the app's

    @dapr.subscribe("pubsub", "orders")
    async def default() -> None: ...

    @router.subscribe("pubsub", "orders", match='event.type == "special"')
    async def special() -> None: ...

    app.include_router(router)
    with (
        pytest.raises(SubscriptionError, match="both served at /events/pubsub/orders") as info,
        TestClient(app),
    ):
        pass
    assert "default" in str(info.value)
    assert "special" in str(info.value)
