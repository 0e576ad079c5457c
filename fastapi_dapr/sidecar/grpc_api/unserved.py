"""The RPCs of the blocks this sidecar does not serve: daprd's gRPC answer when no component
of that kind is loaded.

The HTTP API answers these blocks' routes with daprd's "not configured" errors
(blocks.py); their RPCs answer with daprd's gRPC errors for the same case, read from
dapr/dapr pkg/api/grpc and pkg/api/universal: state, bindings, actors, workflows and
configuration, locks, crypto, jobs and conversation. Each checks what daprd checks before
it looks for the component (a lock's expiry, a job's name), so that a caller sees daprd's
first error. The ones daprd HEAD does not have (actor timers' getters, vectors, search,
binary files) and the actor callback stream stay UNIMPLEMENTED (servicer.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import grpc
from dapr.proto.runtime.v1 import configuration_pb2

from . import errors

__all__: list[str] = []

_C = grpc.StatusCode


class Refusal(NamedTuple):
    """daprd's error status: its code, message and rich details."""

    code: grpc.StatusCode
    message: str
    details: tuple[Any, ...] = ()


# (runtime, request: the message, or the request stream of a client-streaming RPC) -> answer
Answer = Callable[[Any, Any], Awaitable[Any]]


async def answer(service: Any, name: str, request: Any, context: Any) -> Any:
    runtime = await service.running(context)
    result = await ANSWERS[name](runtime, request)
    if isinstance(result, Refusal):
        await errors.abort(context, result.code, result.message, result.details)
    return result


def _info(reason: str, metadata: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    return (errors.error_info(reason, metadata),)


def _app(runtime: Any) -> dict[str, str]:
    return {"appID": runtime.app_id, "namespace": runtime.namespace}


# -- state: a kit error with no ResourceInfo; daprd's gRPC API passes no app id -------------


async def _state(runtime: Any, request: Any) -> Refusal:
    # ExecuteStateTransactionRequest alone names the field `storeName`.
    field = "storeName" if request.DESCRIPTOR.name == "ExecuteStateTransactionRequest" else "store_name"
    message = f"state store {getattr(request, field)} is not configured"
    return Refusal(_C.FAILED_PRECONDITION, message, _info("DAPR_STATE_NOT_CONFIGURED"))


async def _binding(runtime: Any, request: Any) -> Refusal:
    message = f"error invoking output binding {request.name}: couldn't find output binding {request.name}"
    return Refusal(_C.INTERNAL, message, _info("ERR_INVOKE_OUTPUT_BINDING"))


# -- actors and workflows: the actor runtime is disabled without a placement service --------

_NO_PLACEMENT = Refusal(_C.UNAVAILABLE, "placement service is not configured")


async def _placement(runtime: Any, request: Any) -> Refusal:
    return _NO_PLACEMENT


async def _actor(runtime: Any, request: Any) -> Refusal:
    """The actor APIs daprd guards first against its workflow runtime's own actor types."""
    if request.actor_type.startswith("dapr.internal."):
        return Refusal(
            _C.PERMISSION_DENIED,
            f'actor type "{request.actor_type}" is reserved for the Dapr workflow runtime; '
            "direct actor API access is not permitted",
        )
    return _NO_PLACEMENT


# -- configuration ------------------------------------------------------------------------


async def _configuration(runtime: Any, request: Any) -> Refusal:
    message = "configuration stores not configured"
    return Refusal(_C.FAILED_PRECONDITION, message, _info("ERR_CONFIGURATION_STORE_NOT_CONFIGURED"))


async def _unsubscribe(runtime: Any, request: Any) -> Any:
    # daprd answers OK, with its refusal in the answer.
    return configuration_pb2.UnsubscribeConfigurationResponse(
        ok=False,
        message=f"failed to unsubscribe to configuration request {request.id}: subscription does not exist",
    )


# -- locks ----------------------------------------------------------------------------------

_NO_LOCKS = Refusal(_C.FAILED_PRECONDITION, "lock store is not configured")


async def _try_lock(runtime: Any, request: Any) -> Refusal:
    if request.expiry_in_seconds <= 0:
        message = f"ExpiryInSeconds is not positive in lock store {request.store_name}"
        return Refusal(_C.INVALID_ARGUMENT, message)
    return _NO_LOCKS


async def _unlock(runtime: Any, request: Any) -> Refusal:
    return _NO_LOCKS


# -- crypto: the streams read their first message (5 s at most) before the component --------


def _crypto(required: tuple[str, ...]) -> Answer:
    async def answer(runtime: Any, requests: Any) -> Refusal:
        try:
            first = await asyncio.wait_for(requests.__anext__(), 5)
        except asyncio.TimeoutError:
            message = "invalid request: error waiting for first message: context deadline exceeded"
            return Refusal(_C.INVALID_ARGUMENT, message)
        except StopAsyncIteration:
            message = "failed to perform operation: error receiving the first message: EOF"
            return Refusal(_C.INTERNAL, message)
        if not first.HasField("options"):
            message = "invalid request: first message does not contain the required options"
            return Refusal(_C.INVALID_ARGUMENT, message)
        for name in required:
            if not getattr(first.options, name):
                message = f"invalid request: missing property '{_camel(name)}' in the options message"
                return Refusal(_C.INVALID_ARGUMENT, message)
        return Refusal(_C.INTERNAL, "crypto providers not configured")

    return answer


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


async def _subtle(runtime: Any, request: Any) -> Refusal:
    # daprd's default build has no subtle crypto at all, component or not.
    return Refusal(_C.UNIMPLEMENTED, "this API is currently not implemented")


# -- jobs: no scheduler, so its client's error, after daprd's checks of the request ---------

_NO_SCHEDULER = "scheduler clients are disabled"


def _empty(runtime: Any, what: str, reason: str) -> Refusal:
    return Refusal(_C.INVALID_ARGUMENT, f"{what} is empty", _info(reason, _app(runtime)))


def _scheduler(runtime: Any, reason: str, doing: str) -> Refusal:
    message = f"failed to {doing} due to: {_NO_SCHEDULER}"
    return Refusal(_C.INTERNAL, message, _info(reason, _app(runtime)))


async def _schedule_job(runtime: Any, request: Any) -> Refusal:
    if not request.HasField("job"):
        return _empty(runtime, "Job", "DAPR_SCHEDULER_EMPTY")
    job = request.job
    if not job.name:
        return _empty(runtime, "Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY")
    if not job.HasField("schedule") and not job.HasField("due_time"):
        return _empty(runtime, "Schedule", "DAPR_SCHEDULER_SCHEDULE_EMPTY")
    return _scheduler(runtime, "DAPR_SCHEDULER_SCHEDULE_JOB", "schedule job")


def _named_job(reason: str, doing: str) -> Answer:
    async def answer(runtime: Any, request: Any) -> Refusal:
        if not request.name:
            return _empty(runtime, "Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY")
        return _scheduler(runtime, reason, doing)

    return answer


def _jobs(reason: str, doing: str) -> Answer:
    async def answer(runtime: Any, request: Any) -> Refusal:
        return _scheduler(runtime, reason, doing)

    return answer


async def _conversation(runtime: Any, request: Any) -> Refusal:
    return Refusal(_C.INVALID_ARGUMENT, f"failed finding conversation component {request.name}")


_STATE = (
    "GetState",
    "GetBulkState",
    "SaveState",
    "QueryStateAlpha1",
    "DeleteState",
    "DeleteBulkState",
    "ExecuteStateTransaction",
)
_ACTORS = (  # InvokeActor asks for the placement first, the others for the actor type first
    "GetActorState",
    "ExecuteActorStateTransaction",
    "RegisterActorTimer",
    "UnregisterActorTimer",
    "RegisterActorReminder",
    "UnregisterActorReminder",
    "GetActorReminder",
    "UnregisterActorRemindersByType",
    "ListActorReminders",
)


def _table() -> dict[str, Answer]:
    table: dict[str, Answer] = {}
    for name in _STATE:
        table[name] = _state
    table["InvokeBinding"] = _binding
    table["InvokeActor"] = _placement
    for name in _ACTORS:
        table[name] = _actor
    for action in ("Start", "Get", "Purge", "Terminate", "Pause", "Resume", "RaiseEvent"):
        for version in ("Alpha1", "Beta1"):
            table[f"{action}Workflow{version}"] = _placement
    for suffix in ("", "Alpha1"):
        table[f"GetConfiguration{suffix}"] = _configuration
        table[f"SubscribeConfiguration{suffix}"] = _configuration
        table[f"UnsubscribeConfiguration{suffix}"] = _unsubscribe
        table[f"ScheduleJob{suffix}"] = _schedule_job
        table[f"GetJob{suffix}"] = _named_job("DAPR_SCHEDULER_GET_JOB", "get job")
        table[f"DeleteJob{suffix}"] = _named_job("DAPR_SCHEDULER_DELETE_JOB", "delete job")
        table[f"DeleteJobsByPrefix{suffix}"] = _jobs("DAPR_SCHEDULER_DELETE_JOB", "delete job")
        table[f"ListJobs{suffix}"] = _jobs("DAPR_SCHEDULER_LIST_JOBS", "list jobs")
    table["TryLockAlpha1"] = _try_lock
    table["UnlockAlpha1"] = _unlock
    table["EncryptAlpha1"] = _crypto(("key_name", "key_wrap_algorithm"))
    table["DecryptAlpha1"] = _crypto(())
    for operation in ("GetKey", "Encrypt", "Decrypt", "WrapKey", "UnwrapKey", "Sign", "Verify"):
        table[f"Subtle{operation}Alpha1"] = _subtle
    table["ConverseAlpha1"] = _conversation
    table["ConverseAlpha2"] = _conversation
    return table


ANSWERS: dict[str, Answer] = _table()
