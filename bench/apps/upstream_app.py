"""The upstream of bench/invoke_proxy.py: a trivial FastAPI endpoint, served by its own uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
