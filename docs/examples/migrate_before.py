"""A subscriber with dapr-ext-fastapi (the "before" of docs/migrating.md)."""

from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI

app = FastAPI()
dapr_app = DaprApp(app)
orders: list[dict] = []


@dapr_app.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
def on_order(event: dict = Body()):
    order = event["data"]  # the CloudEvent is a plain dict
    if order.get("quantity", 0) > 100:
        return {"status": "DROP"}  # spelled by hand: "drop" would be retried
    orders.append(order)
    return {"status": "SUCCESS"}
