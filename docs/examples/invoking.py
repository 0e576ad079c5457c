from pathlib import Path

from fastapi import FastAPI

app = FastAPI()
RESOURCES = Path(__file__).parent / "resources"

# --8<-- [start:setup]
from fastapi_dapr import Dapr, InvocationSettings

dapr = Dapr(
    app,
    app_id="checkout",
    resources_path=RESOURCES,  # HTTPEndpoint resources live here
    invocation=InvocationSettings(
        apps={"billing": "http://127.0.0.1:8001", "files": "http://127.0.0.1:8002"},  # app id -> base URL
        allowed_urls=["api.example.com"],  # URL targets that may be invoked
    ),
)


@app.post("/checkout/{order_id}")
async def checkout(order_id: str):
    answer = await dapr.invoke("billing", f"invoices/{order_id}", http_method="POST", json={"total": 12})
    if answer.status_code == 409:
        return {"order": order_id, "already": "invoiced"}
    return answer.json()


# --8<-- [end:setup]


async def calls() -> tuple[int, bytes]:
    chunks: list[bytes] = []
    # --8<-- [start:calls]
    answer = await dapr.invoke(
        "billing", "invoices/7",
        http_method="POST",          # any method
        json={"total": 12},          # or content=bytes | str | an async iterable of bytes
        headers={"x-tenant": "a"},
        params={"expand": "lines"},
        timeout=5.0,
    )  # fmt: skip
    answer.status_code, answer.headers["content-type"], answer.json()

    async with await dapr.invoke("files", "big.bin", stream=True) as answer:
        async for chunk in answer.aiter_bytes():  # the body as it arrives
            chunks.append(chunk)
    # --8<-- [end:calls]
    return answer.status_code, b"".join(chunks)
