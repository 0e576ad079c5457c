"""The app's answers to a delivery, read as daprd reads them: SUCCESS, RETRY or DROP.

`classify` reads the answer to one message (reference 3.3), `bulk_statuses`
the answer to a batch, entry by entry (reference 3.6); `answered` is what a
circuit breaker counts as a success. `noted` adds what the handler told the
engine beside its answer (`HandlerNote`), and `drop_reason` says why a message
was dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._json import loads, nests_deeper
from .._status import HandlerNote, Status
from .asgi import AppResponse
from .delivery import Attempt

__all__: list[str] = []

_KNOWN_ANSWERS = {
    (200, status.body): Attempt(status, None if status is Status.RETRY else 200) for status in Status
}
_DECODER = json.JSONDecoder()


def classify(response: AppResponse) -> Attempt:
    """Read the app's answer to a single delivery as daprd does (reference 3.3)."""
    code = response.status
    if code == 404:
        return Attempt(Status.DROP, code, "404: the app has no such route")
    if not 200 <= code < 300:
        return Attempt(None, code, f"HTTP {code}")
    known = _KNOWN_ANSWERS.get((code, response.body))
    if known is not None:  # what fastapi-dapr's own handlers answer
        return known
    if not response.body.strip():
        return Attempt(Status.SUCCESS, code)
    try:
        if nests_deeper(response.body):
            raise ValueError("nested too deep")
        parsed = _DECODER.raw_decode(response.body.decode("utf-8", errors="replace").strip())[0]
    except ValueError:
        return Attempt(Status.SUCCESS, code, "the body is not JSON: read as SUCCESS")
    if parsed is None:
        return Attempt(Status.SUCCESS, code)
    if not isinstance(parsed, dict):
        return Attempt(Status.SUCCESS, code, "the body is not an object: read as SUCCESS")
    value: Any = parsed.get("status")
    if "status" not in parsed:  # Go matches field names case-insensitively
        value = next((v for k, v in parsed.items() if k.lower() == "status"), None)
    if value is None or value == "":
        return Attempt(Status.SUCCESS, code)
    if not isinstance(value, str):
        return Attempt(Status.SUCCESS, code, "status is not a string: read as SUCCESS")
    if value in ("SUCCESS", "RETRY", "DROP"):
        return Attempt(Status(value), None if value == "RETRY" else code)
    return Attempt(None, None, f"unknown status {value!r}")


def bulk_statuses(response: AppResponse, entry_ids: Sequence[str]) -> dict[str, Attempt]:
    """Read the app's answer to a bulk delivery (reference 3.6)."""
    code = response.status
    if code == 404:
        return {e: Attempt(Status.DROP, code, "404: the app has no such route") for e in entry_ids}
    if not 200 <= code < 300:
        return {e: Attempt(None, code, f"HTTP {code}") for e in entry_ids}
    failed = {e: Attempt(None, code, "no status for this entry") for e in entry_ids}
    try:
        parsed = loads(response.body)
        items = parsed["statuses"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        # A 2xx without a readable answer fails every entry, unlike single delivery.
        return {e: Attempt(None, code, "the answer has no statuses") for e in entry_ids}
    for item in items:
        if not isinstance(item, dict):
            continue
        entry_id, status = item.get("entryId"), item.get("status")
        if entry_id in failed and status in ("SUCCESS", "DROP"):
            failed[entry_id] = Attempt(Status(status), code)
        elif entry_id in failed and status == "RETRY":
            failed[entry_id] = Attempt(Status.RETRY, None)
        elif entry_id in failed:
            failed[entry_id] = Attempt(None, None, f"unknown status {status!r}")
    return failed


def answered(attempt: Attempt) -> bool:
    """For a circuit breaker: the app took the message (SUCCESS, or DROP: its decision)."""
    return attempt.status is Status.SUCCESS or attempt.status is Status.DROP


def noted(attempt: Attempt, note: HandlerNote) -> Attempt:
    """`attempt` with what its handler noted: the data failed validation, or it raised."""
    if note.invalid is not None and attempt.status is Status.DROP:
        return Attempt(Status.DROP, attempt.http_status, "data failed validation")
    if note.error is not None and attempt.status is not Status.SUCCESS:
        error = note.error
        raised = f"{note.handler} raised {type(error).__name__}" + (f": {error}" if str(error) else "")
        detail = f"{attempt.detail}: {raised}" if attempt.detail else raised
        return Attempt(attempt.status, attempt.http_status, detail)
    return attempt


def drop_reason(attempt: Attempt, note: HandlerNote | None) -> tuple[str, str]:
    """Why a message was dropped, and the details (the validation errors, if any)."""
    if note is not None and note.invalid is not None:
        return f"data failed validation for handler {note.handler}", note.invalid
    if attempt.http_status == 404:
        return "the app answered HTTP 404 (no such route), read as DROP", ""
    return "the app answered DROP", ""


def failure(attempt: Attempt) -> str:
    """What went wrong in a failed attempt, in words."""
    if attempt.detail:
        return attempt.detail
    return "the app answered RETRY" if attempt.status is Status.RETRY else "it failed"


def given_up(attempts: Sequence[Attempt]) -> str:
    """Why a message was given up: its attempts, and what the last one did."""
    what = failure(attempts[-1])
    if len(attempts) == 1:
        return f"1 attempt failed: {what}"
    return f"{len(attempts)} attempts failed, the last: {what}"
