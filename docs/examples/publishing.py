from fastapi_dapr import BulkPublishEntry, Dapr

from .subscriptions import Order


async def publish_examples(dapr: Dapr) -> None:
    # --8<-- [start:publish]
    await dapr.publish("pubsub", "orders", Order(id="o-1", quantity=2))
    await dapr.publish("pubsub", "audit", "text is text/plain")
    await dapr.publish("pubsub", "blobs", b"\x00\x01", metadata={"rawPayload": "true"})
    await dapr.publish("pubsub", "orders", {"id": "o-2", "quantity": 1}, metadata={"ttlInSeconds": "60"})
    # --8<-- [end:publish]


async def bulk_example(dapr: Dapr) -> list[str]:
    # --8<-- [start:bulk]
    failed = await dapr.publish_bulk(
        "pubsub",
        "orders",
        [{"id": "o-1"}, {"id": "o-2"}, BulkPublishEntry(b"\x00", entry_id="raw")],
        metadata={"ttlInSeconds": "60"},
    )
    for entry in failed:  # FailedEntry(entry_id, error): the ones that were not published
        ...
    # --8<-- [end:bulk]
    return [entry.entry_id for entry in failed]
