"""An in-memory order store, standing in for the service's database."""

from __future__ import annotations

import threading
from typing import Any


class OrderStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: dict[str, dict[str, Any]] = {}

    def add(self, order_id: str, **fields: Any) -> None:
        with self._lock:
            self._orders[order_id] = {"id": order_id, **fields}

    def set_status(self, order_id: str, status: str) -> None:
        with self._lock:
            if order_id in self._orders:
                self._orders[order_id]["status"] = status

    def get(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            order = self._orders.get(order_id)
            return dict(order) if order is not None else None

    def clear(self) -> None:
        with self._lock:
            self._orders.clear()


store = OrderStore()
