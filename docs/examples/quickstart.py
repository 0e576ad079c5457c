from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_dapr import DROP, CloudEvent, Dapr


class Order(BaseModel):
    id: str
    quantity: int


app = FastAPI()
dapr = Dapr(app, app_id="checkout")  # the app is its own Dapr sidecar


@dapr.subscribe(pubsub="pubsub", topic="orders", dead_letter_topic="orders-dead")
async def on_order(event: CloudEvent[Order]):
    if event.data.quantity > 100:
        return DROP  # to the dead-letter topic
    # returning None means SUCCESS; an exception means RETRY
