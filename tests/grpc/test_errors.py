"""daprd's gRPC errors: the code of each of the project's errors (its own, not a mapping of the
HTTP status), their rich details, and the answers of the blocks this sidecar does not serve,
as the official SDK sees them."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from fastapi_dapr._error_codes import PubSubErrors
from fastapi_dapr._exceptions import DaprAPIError
from fastapi_dapr.sidecar.blocks import find_unserved
from fastapi_dapr.sidecar.errors import direct_invoke_error
from fastapi_dapr.sidecar.grpc_api import errors

from ..sidecar.test_standalone import running
from .kit import GrpcApp, GrpcSidecar, run_sdk

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PubSubErrors.not_found("p", {}), C.INVALID_ARGUMENT),
        (PubSubErrors.not_configured("p", {}), C.FAILED_PRECONDITION),
        (PubSubErrors.topic_empty("p", {}), C.INVALID_ARGUMENT),
        (PubSubErrors.bad_metadata("p", {}, "bad"), C.INVALID_ARGUMENT),
        (PubSubErrors.cloud_event_creation("p", "app", "bad"), C.INVALID_ARGUMENT),
        (PubSubErrors.forbidden("p", "t", "app"), C.PERMISSION_DENIED),
        (PubSubErrors.publish_failed("p", "t", "broken"), C.INTERNAL),
        (direct_invoke_error(500, "failed to invoke, id: x, err: gone"), C.INTERNAL),
        (direct_invoke_error(404, "no app id"), C.NOT_FOUND),
        (
            DaprAPIError(500, "ERR_SECRET_STORES_NOT_CONFIGURED", "secret store is not configured"),
            C.FAILED_PRECONDITION,
        ),
        (
            DaprAPIError(401, "ERR_SECRET_STORE_NOT_FOUND", "failed finding secret store with key s"),
            C.INVALID_ARGUMENT,
        ),
        (DaprAPIError(500, "ERR_SECRET_GET", "failed"), C.INTERNAL),
        (DaprAPIError(501, "ERR_API_UNIMPLEMENTED", "no"), C.UNIMPLEMENTED),
        (DaprAPIError(503, "ERR_SIDECAR_NOT_STARTED", "not yet"), C.UNAVAILABLE),
        (DaprAPIError(500, "ERR_SOMETHING_NEW", "?"), C.UNKNOWN),  # grpc-go's code for a non-status error
    ],
    ids=lambda value: value.error_code if isinstance(value, DaprAPIError) else value.name,
)
def test_each_error_has_daprds_grpc_code(error: DaprAPIError, code: grpc.StatusCode) -> None:
    assert errors.grpc_code(error) is code


def test_the_http_apis_unserved_errors_have_daprds_grpc_codes() -> None:
    """The same errors reaching abort_api_error (the HTTP blocks' catalog) get daprd's codes."""
    cases = [
        ("GET", "/v1.0/state/s/k", C.FAILED_PRECONDITION),
        ("POST", "/v1.0/bindings/b", C.INTERNAL),
        ("GET", "/v1.0/actors/t/i/state/k", C.UNAVAILABLE),
        ("POST", "/v1.0-alpha1/lock/l", C.FAILED_PRECONDITION),
        ("GET", "/v1.0/configuration/c", C.FAILED_PRECONDITION),
        ("PUT", "/v1.0-alpha1/crypto/c/encrypt", C.INTERNAL),
        ("POST", "/v1.0-alpha1/conversation/c/converse", C.INVALID_ARGUMENT),
        ("POST", "/v1.0-alpha1/jobs/j", C.INTERNAL),
    ]
    for method, path, code in cases:
        found = find_unserved(path, method)
        assert found is not None, path
        answer, params = found
        assert errors.grpc_code(answer(params, "app", "default")) is code, path


def test_kit_details_become_protobuf_messages_in_order() -> None:
    error = PubSubErrors.forbidden("orders-bus", "secret", "app")
    resource, info = errors.detail_messages(error.details)
    assert resource == error_details_pb2.ResourceInfo(
        resource_type="pubsub",
        resource_name="orders-bus",
        description="topic secret is not allowed for app id app",
    )
    assert info == error_details_pb2.ErrorInfo(
        reason="DAPR_PUBSUB_FORBIDDEN",
        domain="dapr.io",
        metadata={"topic": "secret", "error": "topic secret is not allowed for app id app"},
    )
    # Go's nil map (the state query's ErrorInfo) reads as no metadata.
    assert errors.detail_messages([{"@type": info_type(), "reason": "R", "metadata": None}]) == [
        error_details_pb2.ErrorInfo(reason="R", domain="dapr.io")
    ]


def info_type() -> str:
    return "type.googleapis.com/google.rpc.ErrorInfo"


class Aborted(Exception):
    pass


class Context:
    """What abort_api_error uses of a grpc.aio servicer context."""

    def __init__(self) -> None:
        self.ended: tuple[Any, str, Any] | None = None

    async def abort(self, code: Any, message: str, trailing_metadata: Any = ()) -> NoReturn:
        self.ended = (code, message, trailing_metadata)
        raise Aborted


async def test_abort_api_error_sends_daprds_status_with_its_details() -> None:
    context = Context()
    with pytest.raises(Aborted):
        await errors.abort_api_error(context, PubSubErrors.not_found("nope", {}))
    assert context.ended is not None
    code, message, trailer = context.ended
    assert (code, message) == (C.INVALID_ARGUMENT, "pubsub nope is not found")
    ((key, value),) = trailer
    assert key == "grpc-status-details-bin"
    status = status_pb2.Status.FromString(value)
    assert (status.code, status.message) == (C.INVALID_ARGUMENT.value[0], "pubsub nope is not found")
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == ("DAPR_PUBSUB_NOT_FOUND", "dapr.io")


async def test_an_older_style_error_has_no_details() -> None:
    context = Context()
    with pytest.raises(Aborted):
        await errors.abort_api_error(context, direct_invoke_error(500, "failed to invoke, id: x, err: gone"))
    assert context.ended == (C.INTERNAL, "failed to invoke, id: x, err: gone", ())


# The RPCs of the blocks not served, each answered as daprd answers with no such component.
UNSERVED = """
    import json
    import grpc
    from dapr.clients import DaprClient
    from dapr.clients.exceptions import DaprGrpcError
    from dapr.proto import api_v1

    def error(call):
        try:
            answer = call()
            if hasattr(answer, "__iter__") and not isinstance(answer, (str, bytes)):
                list(answer)  # a stream's status comes with its end
            return ["OK", str(answer)]
        except grpc.RpcError as exc:
            exc = exc if isinstance(exc, DaprGrpcError) else DaprGrpcError(exc)
            info = exc.status_details().error_info or {}
            return [exc.code().name, exc.details(), info.get("reason"), info.get("metadata")]

    def first(*requests):
        return iter(requests)

    with DaprClient() as client:
        stub, R = client._stub, api_v1
        actor = dict(actor_type="t", actor_id="i")
        reserved = dict(actor_type="dapr.internal.x.workflow", actor_id="i")
        options = R.EncryptRequestOptions(component_name="c", key_name="k", key_wrap_algorithm="RSA")
        job = R.Job(name="j", schedule="@every 1s")
        print(json.dumps({
            "state": error(lambda: client.get_state("store", "k")),
            "save": error(lambda: client.save_state("store", "k", "v")),
            "binding": error(lambda: client.invoke_binding("out", "create", "x")),
            "actor": error(lambda: stub.InvokeActor(R.InvokeActorRequest(**actor, method="m"))),
            "actor_state": error(lambda: stub.GetActorState(R.GetActorStateRequest(**actor, key="k"))),
            "reserved": error(lambda: stub.GetActorState(R.GetActorStateRequest(**reserved))),
            "workflow": error(lambda: stub.StartWorkflowBeta1(R.StartWorkflowRequest(workflow_name="w"))),
            "configuration": error(lambda: client.get_configuration("config", ["k"])),
            "config_stream": error(
                lambda: stub.SubscribeConfiguration(R.SubscribeConfigurationRequest(store_name="config"))
            ),
            "unsubscribe": error(
                lambda: stub.UnsubscribeConfiguration(R.UnsubscribeConfigurationRequest(id="x1"))
            ),
            "lock": error(lambda: client.try_lock("locks", "r", "me", 10)),
            "lock_expiry": error(
                lambda: stub.TryLockAlpha1(R.TryLockRequest(store_name="locks", resource_id="r"))
            ),
            "unlock": error(lambda: client.unlock("locks", "r", "me")),
            "encrypt": error(lambda: stub.EncryptAlpha1(first(R.EncryptRequest(options=options)))),
            "encrypt_options": error(lambda: stub.EncryptAlpha1(first(R.EncryptRequest()))),
            "subtle": error(lambda: stub.SubtleGetKeyAlpha1(R.SubtleGetKeyRequest(name="k"))),
            "job": error(lambda: stub.ScheduleJobAlpha1(R.ScheduleJobRequest(job=job))),
            "job_name": error(lambda: stub.GetJobAlpha1(R.GetJobRequest())),
            "jobs": error(lambda: stub.ListJobs(R.ListJobsRequest())),
            "conversation": error(lambda: stub.ConverseAlpha1(R.ConversationRequest(name="llm"))),
            "unimplemented": error(lambda: stub.GetActorTimer(R.GetActorTimerRequest(**actor, name="n"))),
        }))
"""


def check_unserved(answers: dict[str, Any], app_id: str) -> None:
    jobs_metadata = {"appID": app_id, "namespace": "default"}
    assert answers == {
        "state": [
            "FAILED_PRECONDITION",
            "state store store is not configured",
            "DAPR_STATE_NOT_CONFIGURED",
            None,
        ],
        "save": [
            "FAILED_PRECONDITION",
            "state store store is not configured",
            "DAPR_STATE_NOT_CONFIGURED",
            None,
        ],
        "binding": [
            "INTERNAL",
            "error invoking output binding out: couldn't find output binding out",
            "ERR_INVOKE_OUTPUT_BINDING",
            None,
        ],
        "actor": ["UNAVAILABLE", "placement service is not configured", None, None],
        "actor_state": ["UNAVAILABLE", "placement service is not configured", None, None],
        "reserved": [
            "PERMISSION_DENIED",
            'actor type "dapr.internal.x.workflow" is reserved for the Dapr workflow runtime; '
            "direct actor API access is not permitted",
            None,
            None,
        ],
        "workflow": ["UNAVAILABLE", "placement service is not configured", None, None],
        "configuration": [
            "FAILED_PRECONDITION",
            "configuration stores not configured",
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
            None,
        ],
        "config_stream": [
            "FAILED_PRECONDITION",
            "configuration stores not configured",
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
            None,
        ],
        "unsubscribe": [
            "OK",
            'message: "failed to unsubscribe to configuration request x1: subscription does not exist"\n',
        ],
        "lock": ["FAILED_PRECONDITION", "lock store is not configured", None, None],
        "lock_expiry": [
            "INVALID_ARGUMENT",
            "ExpiryInSeconds is not positive in lock store locks",
            None,
            None,
        ],
        "unlock": ["FAILED_PRECONDITION", "lock store is not configured", None, None],
        "encrypt": ["INTERNAL", "crypto providers not configured", None, None],
        "encrypt_options": [
            "INVALID_ARGUMENT",
            "invalid request: first message does not contain the required options",
            None,
            None,
        ],
        "subtle": ["UNIMPLEMENTED", "this API is currently not implemented", None, None],
        "job": [
            "INTERNAL",
            "failed to schedule job due to: scheduler clients are disabled",
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            jobs_metadata,
        ],
        "job_name": ["INVALID_ARGUMENT", "Name is empty", "DAPR_SCHEDULER_JOB_NAME_EMPTY", jobs_metadata],
        "jobs": [
            "INTERNAL",
            "failed to list jobs due to: scheduler clients are disabled",
            "DAPR_SCHEDULER_LIST_JOBS",
            jobs_metadata,
        ],
        "conversation": ["INVALID_ARGUMENT", "failed finding conversation component llm", None, None],
        "unimplemented": ["UNIMPLEMENTED", "GetActorTimer is not implemented", None, None],
    }


@pytest.mark.process
async def test_the_unserved_blocks_answer_as_daprd_embedded() -> None:
    app = GrpcApp()
    async with running(app):
        check_unserved(await run_sdk(UNSERVED, http_port=app.port, grpc_port=app.grpc_port), "grpcapp")


@pytest.mark.process
async def test_the_unserved_blocks_answer_as_daprd_standalone() -> None:
    sidecar = GrpcSidecar("standalone", None)
    async with running(sidecar):
        answers = await run_sdk(UNSERVED, http_port=sidecar.port, grpc_port=sidecar.grpc_port)
        check_unserved(answers, "standalone")
