"""The FastAPI endpoint that receives deliveries for one subscription handler.

The user's function is left untouched; the endpoint built here has the same
FastAPI parameters (dependencies, headers, `Request`, ...) and one more, the
request, from which it reads the CloudEvent itself. FastAPI never validates the
body, so a payload that does not fit the handler's type is answered DROP with a
log line, instead of a 422 that daprd would retry forever (reference 3.3).
"""

from __future__ import annotations

import dataclasses
import hmac
import inspect
import logging
import os
import typing
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import BackgroundTasks, params
from fastapi.encoders import jsonable_encoder
from fastapi.security import SecurityScopes
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from ._binding import event_dict_from_http
from ._cloudevent import BulkEntry, CloudEvent
from ._exceptions import HandlerSignatureError
from ._json import DELIVERY_DEPTH, loads
from ._logs import FirstTimes
from ._media import is_json, media_type
from ._status import DROP, NOTE, RETRY, SUCCESS, Status
from ._subscription import Subscription

__all__: list[str] = []  # internal: the public names are in fastapi_dapr.__all__

logger = logging.getLogger("fastapi_dapr")

SUBSCRIPTION_ATTR = "__fastapi_dapr_subscription__"
_REQUEST_PARAM = "fastapi_dapr_request__"
_FASTAPI_TYPES = (HTTPConnection, Response, BackgroundTasks, SecurityScopes)
_STATUS_BY_NAME = {status.value: status for status in Status}

EventMode = Literal["none", "event", "data", "bulk"]


@dataclasses.dataclass(frozen=True)
class _EventParameter:
    name: str | None
    mode: EventMode
    model: Any  # CloudEvent[T] or BulkEntry[T]


def _is_fastapi_parameter(annotation: Any, default: Any) -> bool:
    if isinstance(default, (params.Param, params.Depends)):
        return True
    if typing.get_origin(annotation) is Annotated:
        extras = typing.get_args(annotation)[1:]
        if any(isinstance(extra, (params.Param, params.Depends)) for extra in extras):
            return True
        annotation = typing.get_args(annotation)[0]
    return _is_class(annotation, _FASTAPI_TYPES)


def _is_class(annotation: Any, base: type | tuple[type, ...]) -> bool:
    # list[X] passes isinstance(..., type) on Python 3.10, and then fails issubclass.
    return (
        inspect.isclass(annotation)
        and typing.get_origin(annotation) is None
        and (issubclass(annotation, base))
    )


def _is_request_annotation(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return _is_class(annotation, Request)


def _refuse_body(name: str, annotation: Any, default: Any, handler: str) -> None:
    extras = typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ()
    if isinstance(default, params.Body) or any(isinstance(e, params.Body) for e in extras):
        raise HandlerSignatureError(
            f"{handler}: parameter {name!r} reads the request body with Body()/Form()/File(); "
            "the body of a delivery is the CloudEvent: annotate it as CloudEvent[T] or T instead"
        )


def _event_model(name: str, annotation: Any, handler: str) -> _EventParameter:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (list, Sequence, typing.Sequence):
        (item,) = typing.get_args(annotation) or (Any,)
        if _is_class(item, BulkEntry):
            bulk_model = item if item.__pydantic_generic_metadata__["args"] else BulkEntry[Any]
            return _EventParameter(name, "bulk", bulk_model)
    if _is_class(annotation, BulkEntry):
        raise HandlerSignatureError(f"{handler}: parameter {name!r}: a bulk handler takes list[BulkEntry[T]]")
    if _is_class(annotation, CloudEvent):
        model = annotation if annotation.__pydantic_generic_metadata__["args"] else CloudEvent[Any]
        return _EventParameter(name, "event", model)
    if annotation is inspect.Parameter.empty:
        annotation = Any
    return _EventParameter(name, "data", CloudEvent[annotation])


def _split_signature(
    func: Callable[..., Any], handler: str
) -> tuple[_EventParameter, list[inspect.Parameter]]:
    """The event parameter, and the parameters FastAPI fills."""
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # an unresolvable forward reference
        raise HandlerSignatureError(f"{handler}: cannot resolve annotations: {exc}") from exc
    event = _EventParameter(None, "none", CloudEvent[Any])
    fastapi_params: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise HandlerSignatureError(
                f"{handler}: parameter {parameter.name!r} must be passable by keyword"
            )
        if parameter.name == _REQUEST_PARAM:
            raise HandlerSignatureError(f"{handler}: the name {_REQUEST_PARAM!r} is reserved")
        annotation = hints.get(parameter.name, parameter.annotation)
        _refuse_body(parameter.name, annotation, parameter.default, handler)
        if _is_fastapi_parameter(annotation, parameter.default):
            fastapi_params.append(
                parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
            )
            continue
        if event.name is not None:
            raise HandlerSignatureError(
                f"{handler}: both {event.name!r} and {parameter.name!r} would receive the event; "
                "give the other one a FastAPI marker such as Depends(), Header() or Query()"
            )
        event = _event_model(parameter.name, annotation, handler)
    return event, fastapi_params


def _configured_token(request: Request) -> str | None:
    app = request.app
    dapr = getattr(app.state, "fastapi_dapr", None)
    if dapr is not None:
        token: str | None = dapr.app_api_token
        return token
    return os.environ.get("APP_API_TOKEN") or None


def parse_delivery(
    model: Any, body: bytes, headers: Mapping[str, str], decoded: Mapping[str, Any] | None = None
) -> Any:
    """The delivered CloudEvent, validated as `model` (raises `ValueError`).

    daprd's structured-mode JSON is validated straight from the bytes, or from
    `decoded`, the JSON object the bytes encode when the caller already has
    it; any other body goes through the binding's general path.
    """
    content_type = headers.get("content-type", "")
    if decoded is not None and "specversion" in decoded:
        try:
            return model.__pydantic_validator__.validate_python(decoded)  # model_validate, inlined
        except ValueError:
            pass  # the paths below give the error, or accept what JSON mode accepts
    # daprd always posts application/cloudevents+json: structured mode, no ce-* headers.
    if b'"specversion"' in body and (
        content_type == "application/cloudevents+json"
        or ("ce-specversion" not in headers and is_json(media_type(content_type)))
    ):
        try:
            parsed = model.model_validate_json(body)
        except ValueError:
            pass  # the general path gives the error, or reads what this one could not
        else:
            if "specversion" in parsed.model_fields_set:
                return parsed
    return model.model_validate(event_dict_from_http(body, headers))


def token_error(request: Request) -> Response | None:
    """401 unless the request carries the configured `APP_API_TOKEN` (reference 6.6)."""
    expected = _configured_token(request)
    if not expected:
        return None
    given = request.headers.get("dapr-api-token", "")
    if hmac.compare_digest(given.encode(), expected.encode()):
        return None
    return JSONResponse({"errorCode": "ERR_UNAUTHORIZED", "message": "invalid api token"}, status_code=401)


def _event_id_for_log(body: bytes, headers: Mapping[str, str]) -> str:
    if "ce-id" in headers:
        return headers["ce-id"]
    try:
        parsed = loads(body, DELIVERY_DEPTH)
    except ValueError:
        return "<unparseable body>"
    if isinstance(parsed, dict):
        return str(parsed.get("id", "<no id>"))
    return "<no id>"


# Under daprd each retry of a message calls the handler again: its traceback once per message.
_TRACED = FirstTimes()


def _log_failure(event_id: str, where: str, name: str, exc: Exception) -> None:
    if _TRACED.first((where, event_id)):
        logger.error("RETRY event %s on %s: handler %s raised", event_id, where, name, exc_info=exc)
    else:
        logger.error(
            "RETRY event %s on %s: handler %s raised %s: %s again (traceback above, at its first attempt)",
            *(event_id, where, name, type(exc).__name__, exc),
        )


def _validation_summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
    return str(exc)


def _answer(result: Any) -> Status | Response:
    """What a handler's return value tells daprd: a status, or an HTTP answer of its own."""
    if result is None:
        return SUCCESS
    if isinstance(result, (Status, Response)):
        return result
    if isinstance(result, str) and result in _STATUS_BY_NAME:
        return _STATUS_BY_NAME[result]
    # Anything else is serialised as FastAPI would; daprd reads a 2xx JSON
    # answer with a `status` field as that status, and otherwise as SUCCESS.
    return JSONResponse(jsonable_encoder(result))


def _as_response(answer: Status | Response) -> Response:
    return answer.response() if isinstance(answer, Status) else answer


DirectHandler = Callable[[bytes, "Mapping[str, Any] | None"], Awaitable["Status | Response"]]
"""A subscription endpoint without the HTTP around it: the CloudEvent's JSON bytes
(and, when the caller has it, the JSON object they encode) in, the handler's
answer out (a `Status`, or a `Response`). `HTTPException` propagates, as it does
from the endpoint."""

_DIRECT: weakref.WeakKeyDictionary[Callable[..., Any], DirectHandler] = weakref.WeakKeyDictionary()


def direct_handler(endpoint: Any) -> DirectHandler | None:
    """The in-process delivery of an endpoint `build_endpoint` made (`DirectHandler`), or
    None: for any other endpoint, or one whose handler takes FastAPI parameters (then
    only the endpoint, with its dependencies, can serve it). The delivery engine's way
    to skip the HTTP request around a plain handler."""
    try:
        return _DIRECT.get(endpoint)
    except TypeError:  # not weakly referable (None, a bound method's owner...): none of ours
        return None


# daprd's delivery: a structured-mode CloudEvent (reference 3.2).
_STRUCTURED = {"content-type": "application/cloudevents+json"}


def build_endpoint(subscription: Subscription) -> Callable[..., Awaitable[Response]]:
    """The FastAPI endpoint serving `subscription`'s route.

    When the handler takes no FastAPI parameters, the same delivery without
    the HTTP request around it is registered for the in-process engine
    (`direct_handler(endpoint)`).
    """
    func = subscription.handler
    name = subscription.handler_name
    event, fastapi_params = _split_signature(func, name)
    if subscription.bulk is not None and event.mode not in ("bulk", "none"):
        raise HandlerSignatureError(
            f"{name}: a bulk subscription's handler takes list[BulkEntry[T]], not {event.name!r}"
        )
    if subscription.bulk is None and event.mode == "bulk":
        raise HandlerSignatureError(
            f"{name}: parameter {event.name!r} takes bulk entries; subscribe with bulk=True"
        )
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )

    async def call(kwargs: dict[str, Any]) -> Any:
        if is_async:
            return await func(**kwargs)
        return await run_in_threadpool(func, **kwargs)

    async def handle(
        body: bytes,
        headers: Mapping[str, str],
        kwargs: dict[str, Any],
        decoded: Mapping[str, Any] | None = None,
    ) -> Status | Response:
        try:
            parsed = parse_delivery(event.model, body, headers, decoded)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            note = NOTE.get()
            if note is not None:  # the embedded engine says it, in the message's own line
                note.handler, note.invalid = name, _validation_summary(exc)
                return DROP
            logger.warning(
                "DROP event %s on %s for %s: the data failed validation: %s",
                _event_id_for_log(body, headers),
                subscription.describe(),
                name,
                _validation_summary(exc),
            )
            return DROP
        if event.name is not None:
            kwargs[event.name] = parsed if event.mode == "event" else parsed.data
        try:
            result = await call(kwargs)
        except HTTPException:
            raise  # an HTTP answer the handler chose on purpose
        except Exception as exc:
            note = NOTE.get()
            if note is not None:  # the embedded engine logs it with the attempt
                note.handler, note.error = name, exc
            else:
                _log_failure(parsed.id, subscription.describe(), name, exc)
            return RETRY.response(status_code=500)
        return _answer(result)

    async def single(request: Request, kwargs: dict[str, Any]) -> Response:
        return _as_response(await handle(await request.body(), request.headers, kwargs))

    def direct(body: bytes, decoded: Mapping[str, Any] | None) -> Awaitable[Status | Response]:
        return handle(body, _STRUCTURED, {}, decoded)  # the coroutine itself: one frame less

    async def bulk(request: Request, kwargs: dict[str, Any]) -> Response:
        body = await request.body()
        try:
            envelope = loads(body, DELIVERY_DEPTH)
            raw_entries = envelope["entries"]
            if not isinstance(raw_entries, list):
                raise TypeError("entries is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(
                {
                    "errorCode": "ERR_MALFORMED_REQUEST",
                    "message": f"not a bulk delivery envelope: {exc}",
                },
                status_code=400,
            )
        order: list[str] = []
        statuses: dict[str, Status] = {}
        entries: list[Any] = []
        for raw in raw_entries:
            entry_id = str(raw.get("entryId", "")) if isinstance(raw, dict) else ""
            order.append(entry_id)
            try:
                entries.append(event.model.model_validate(_bulk_entry(raw, envelope)))
            except (ValueError, TypeError) as exc:
                logger.warning(
                    "DROP bulk entry %s on %s for %s: the data failed validation: %s",
                    entry_id or "<no entryId>",
                    subscription.describe(),
                    name,
                    _validation_summary(exc),
                )
                statuses[entry_id] = DROP
        if entries:
            if event.name is not None:
                kwargs[event.name] = entries
            try:
                result = await call(kwargs)
            except HTTPException:
                raise
            except Exception as exc:
                note = NOTE.get()
                if note is not None:  # the embedded engine logs it with the attempt
                    note.handler, note.error = name, exc
                else:
                    logger.exception(
                        "RETRY %d bulk entries on %s: handler %s raised",
                        len(entries),
                        subscription.describe(),
                        name,
                    )
                result = RETRY
            if isinstance(result, Response):
                return result
            if isinstance(result, Mapping) and "statuses" in result:
                # Already daprd's answer: add the entries dropped before the handler ran.
                answer = jsonable_encoder(result)
                listed = {item.get("entryId") for item in answer["statuses"] if isinstance(item, dict)}
                answer["statuses"] += [
                    {"entryId": entry_id, "status": status.value}
                    for entry_id, status in statuses.items()
                    if entry_id not in listed
                ]
                return JSONResponse(answer)
            statuses.update(_bulk_statuses(result, entries, name))
        return JSONResponse(
            {"statuses": [{"entryId": e, "status": statuses.get(e, RETRY).value} for e in order]}
        )

    deliver = bulk if subscription.bulk is not None else single

    # FastAPI fills one Request parameter per endpoint: share the handler's if it has one.
    request_name = next((p.name for p in fastapi_params if _is_request_annotation(p.annotation)), None)
    own_request = None
    if request_name is None:
        request_name = _REQUEST_PARAM
        own_request = inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request)

    async def endpoint(**kwargs: Any) -> Response:
        request: Request = kwargs.pop(_REQUEST_PARAM) if own_request is not None else kwargs[request_name]
        refused = token_error(request)
        if refused is not None:
            return refused
        return await deliver(request, kwargs)

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        fastapi_params if own_request is None else [own_request, *fastapi_params],
        return_annotation=Response,
    )
    endpoint.__name__ = getattr(func, "__name__", "handler")
    endpoint.__qualname__ = getattr(func, "__qualname__", endpoint.__name__)
    endpoint.__module__ = getattr(func, "__module__", __name__)
    endpoint.__doc__ = getattr(func, "__doc__", None)
    setattr(endpoint, SUBSCRIPTION_ATTR, subscription)
    if not fastapi_params and subscription.bulk is None:
        _DIRECT[endpoint] = direct
    return endpoint


def _bulk_entry(raw: Any, envelope: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw.get("entryId"):
        raise ValueError("entry without entryId")
    content_type = raw.get("contentType") or "application/cloudevents+json"
    data = raw.get("event")
    if isinstance(data, dict) and "specversion" in data:
        event: Any = data
    elif isinstance(data, str) and media_type(content_type, lower=False) != "application/cloudevents+json":
        # A raw payload entry: daprd sends the bytes as a base64 string (reference 3.6).
        event = {
            "data_base64": data,
            "datacontenttype": content_type,
            "topic": envelope.get("topic"),
            "pubsubname": envelope.get("pubsubname"),
        }
    else:
        event = {"data": data, "datacontenttype": content_type}
    return {
        "entryId": raw["entryId"],
        "event": event,
        "metadata": raw.get("metadata") or {},
        "contentType": content_type,
    }


def _bulk_statuses(result: Any, entries: Sequence[Any], handler: str) -> dict[str, Status]:
    ids = [entry.entry_id for entry in entries]
    if result is None:
        return dict.fromkeys(ids, SUCCESS)
    if isinstance(result, str) and result in _STATUS_BY_NAME:
        return dict.fromkeys(ids, _STATUS_BY_NAME[result])
    if isinstance(result, Mapping):
        statuses: dict[str, Status] = {}
        for entry_id in ids:
            value = result.get(entry_id)
            # daprd retries an entry missing from the answer (reference 3.6).
            statuses[entry_id] = _STATUS_BY_NAME.get(str(value), RETRY) if value else RETRY
        return statuses
    logger.error(
        "handler %s returned %r; a bulk handler returns None, a Status or "
        "a mapping of entry id to Status: retrying the batch",
        handler,
        type(result).__name__,
    )
    return dict.fromkeys(ids, RETRY)
