# --8<-- [start:setup]
from fastapi import FastAPI

from fastapi_dapr import Dapr, InvocationSettings

app = FastAPI()
dapr = Dapr(
    app,
    app_id="checkout",
    resources_path="resources",  # HTTPEndpoint resources live here
    invocation=InvocationSettings(
        apps={  # app id -> base URL
            "billing": "http://127.0.0.1:9001",
            "files": "http://127.0.0.1:9002",
        },
        allowed_urls=["api.example.com"],  # URL targets that may be invoked
    ),
)


@app.post("/checkout/{order_id}")
async def checkout(order_id: str):
    path, invoice = f"invoices/{order_id}", {"total": 12}
    answer = await dapr.invoke("billing", path, http_method="POST", json=invoice)
    if answer.status_code == 409:
        return {"order": order_id, "already": "invoiced"}
    return answer.json()


# --8<-- [end:setup]


# --8<-- [start:calls]
async def calls() -> tuple[int, bytes]:
    answer = await dapr.invoke(
        "billing", "invoices/7",
        http_method="POST",          # any method
        json={"total": 12},          # or content=: bytes, str, async iterable
        headers={"x-tenant": "a"},
        params={"expand": "lines"},
        timeout=5.0,
    )  # fmt: skip
    answer.status_code, answer.headers["content-type"], answer.json()

    chunks: list[bytes] = []
    async with await dapr.invoke("files", "big.bin", stream=True) as answer:
        async for chunk in answer.aiter_bytes():  # the body as it arrives
            chunks.append(chunk)
    return answer.status_code, b"".join(chunks)


# --8<-- [end:calls]


# --8<-- [start:events]
async def prices() -> list[bytes]:
    events: list[bytes] = []
    async with await dapr.invoke("prices", "stream", stream=True) as answer:
        async for chunk in answer.aiter_bytes():  # each event, as it is sent
            events.append(chunk)
    return events


# --8<-- [end:events]
