from fastapi_dapr import BulkPublishEntry, Dapr

from .subscriptions import Order  # docs/examples/subscriptions.py's model


# --8<-- [start:publish]
async def publish_examples(dapr: Dapr) -> None:
    await dapr.publish("pubsub", "orders", Order(id="o-1", quantity=2))  # JSON
    await dapr.publish("pubsub", "audit", "text is text/plain")
    raw, ttl = {"rawPayload": "true"}, {"ttlInSeconds": "60"}
    await dapr.publish("pubsub", "blobs", b"\x00\x01", metadata=raw)
    order = {"id": "o-2", "quantity": 1}  # a dict, a list, a number: JSON
    await dapr.publish("pubsub", "orders", order, metadata=ttl)


# --8<-- [end:publish]


# --8<-- [start:bulk]
async def bulk_example(dapr: Dapr) -> list[str]:
    failed = await dapr.publish_bulk(
        "pubsub",
        "orders",
        [{"id": "o-1"}, {"id": "o-2"}, BulkPublishEntry(b"\x00", entry_id="raw")],
        metadata={"ttlInSeconds": "60"},
    )
    # FailedEntry(entry_id, error): the entries not published
    return [entry.entry_id for entry in failed]


# --8<-- [end:bulk]
