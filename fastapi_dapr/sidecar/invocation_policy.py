"""Resiliency for service invocation (reference 8): which policy an invocation gets, and
running its attempts as daprd's `/v1.0/invoke` does.

- A request whose body is known whole (a length, or none) can be replayed: an answer
  outside 200 to 399 is then a failure, read whole, retried as `matching` allows, and
  the last one is the caller's answer. A streamed body is sent once: no retries, but
  the timeout and the circuit breaker apply, and a failed answer counts against it.
- An error reaching the target (no connection, no answer) is retried; an open circuit
  is not, and answers 500 `ERR_DIRECT_INVOKE` at once.
- Without any policy for another app id, daprd's built-in retry applies: three more
  tries, a second apart, when the app can't be connected to at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.types import Send

from .._exceptions import DaprAPIError
from .._invocation import InvokeResponse
from .._retry import RetryPolicy
from .policy import Policy
from .policy_errors import CircuitBusy, CircuitOpen, CodeFailure, NotRetried, PolicyError

if TYPE_CHECKING:
    from .proxy import Target
    from .runtime import Runtime

__all__: list[str] = []


def endpoint_key(target: Target | None, name: str, method: str) -> str:
    """daprd's circuit-breaker key for an invocation (`pkg/api/http/directmessaging.go`)."""
    if target is not None and target.kind == "url":
        return f"{name}/{method}"
    if target is not None and target.kind == "endpoint":
        return f"{name}:{target.base_url}"
    return f"{name}:{method}"


def invocation_policy(runtime: Runtime, target: Target | None, name: str, method: str) -> Policy:
    """The policy of invoking `method` on `target` (None: this app itself)."""
    return runtime.resiliency.endpoint_policy(name, endpoint_key(target, name, method))


def built_in_retry(runtime: Runtime, target: Target | None) -> RetryPolicy | None:
    """daprd's built-in retry of another app that can't be connected to, unless a Resiliency
    targets that app by name (a default policy does not stop it: daprd nests the two)."""
    if target is None or target.kind != "app" or runtime.resiliency.app_defined(target.name):
        return None
    return runtime.resiliency.built_in_service_retries


def _succeeded(response: InvokeResponse) -> bool:
    return 200 <= response.status_code <= 399


async def run_invocation(
    runtime: Runtime,
    policy: Policy,
    name: str,
    open_attempt: Callable[[], Awaitable[InvokeResponse]],
    *,
    replayable: bool,
) -> InvokeResponse:
    """The caller's answer, after the policy's attempts; raises `DaprAPIError`."""
    retrying = replayable and policy.retry is not None

    async def attempt() -> InvokeResponse:
        try:
            response = await open_attempt()
        except DaprAPIError as exc:
            if exc.status_code != 500:  # refused here (403, 413): the target was not reached
                raise NotRetried(exc, counts=False) from exc
            if not replayable:
                raise NotRetried(exc) from exc  # a body already streamed can't be sent again
            raise
        if retrying and not _succeeded(response):
            # Read whole, to be retried or to be the caller's answer (daprd's codeError).
            await response.aread()
            raise CodeFailure(response.status_code, f"HTTP {response.status_code}", response)
        return response

    try:
        return await policy.run(attempt, runtime.clock, succeeded=_succeeded, retries=replayable)
    except CodeFailure as exc:
        last = exc.result
        assert isinstance(last, InvokeResponse)
        return last
    except (CircuitOpen, CircuitBusy) as exc:
        raise DaprAPIError(500, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {name}, err: {exc}") from None
    except PolicyError as exc:
        raise DaprAPIError(500, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {name}, err: {exc}") from None


async def send_response(response: InvokeResponse, send: Send, *, event_stream: bool = False) -> None:
    """Stream an invocation's answer to an ASGI caller, as the proxy does: an event stream
    answered 200. The caller's leaving is watched by the caller (`_caller.CallerWatch`):
    the answer is then given up (its connection closed, an in-process route cancelled)."""
    status = response.status_code
    if event_stream and 200 <= status < 300:
        status = 200  # as daprd
    try:
        await send({"type": "http.response.start", "status": status, "headers": response.headers.raw})
        async for chunk in response.aiter_bytes():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await response.aclose()
