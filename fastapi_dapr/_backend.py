"""`Backend`: what `Dapr` delegates its mode to.

`Dapr` is the same object in both modes; what publishing, invoking and the app's
lifespan do is its backend's: `fastapi_dapr._remote.RemoteBackend` under a real
daprd, `fastapi_dapr.sidecar.embedded.EmbeddedBackend` when the app is its own
sidecar. This is the only contract between the two: `Dapr` calls nothing else of
a backend, and a backend is given settings, never the `Dapr` instance.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._call import Call
    from ._invocation import InvocationSettings, InvokeResponse
    from ._publishing import FailedEntry
    from ._retry import RetryPolicy
    from ._subscription import TopicSubscription
    from .sidecar.api import SidecarAPI
    from .sidecar.metrics import Metrics

__all__: list[str] = []


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `Dapr`'s attributes of the same names say when the app starts (until then
    they may be changed)."""

    app_id: str
    app_api_token: str | None
    resources_paths: Sequence[str | os.PathLike[str]]
    retry: RetryPolicy | None
    invocation: InvocationSettings


class Backend:
    """One mode of `Dapr`. Every method is the mode's; this base only names them.

    `sidecar` and `metrics` are the embedded sidecar's API and counters (None in
    remote mode), published as `Dapr.sidecar` and `Dapr.metrics`.
    """

    sidecar: SidecarAPI | None = None
    metrics: Metrics | None = None
    grpc_port: int | None = None  # the embedded sidecar's gRPC API, while it listens

    async def publish(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> str:
        """Publish as `Dapr.publish` documents; the broker's message id when the backend
        knows it (embedded), else ""."""
        raise NotImplementedError

    async def publish_bulk(
        self, pubsub: str, topic: str, entries: Iterable[Any], metadata: Mapping[str, str] | None
    ) -> list[FailedEntry]:
        """Publish as `Dapr.publish_bulk` documents."""
        raise NotImplementedError

    async def invoke(self, target: str, call: Call) -> InvokeResponse:
        """Send `call` to `target`; the answer once its headers came, its body not read."""
        raise NotImplementedError

    def lifespan(
        self,
        app_lifespan: AbstractAsyncContextManager[Any],
        subscriptions: list[TopicSubscription],
        settings: Settings,
    ) -> AbstractAsyncContextManager[Any]:
        """The app's lifespan with the backend's own around it (`subscriptions` checked)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Let go of what the backend holds (connections); it may be used again after."""
        raise NotImplementedError
