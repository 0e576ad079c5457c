"""What a subscription handler tells the sidecar about a message (reference 3.3)."""

from __future__ import annotations

import contextvars
import enum

from starlette.responses import Response

__all__ = ["DROP", "RETRY", "SUCCESS", "Status"]


class Status(str, enum.Enum):
    """The processing status of a delivered message.

    A handler returns one (or the same string) to say what becomes of the
    message. The values are the exact, case-sensitive strings daprd matches:
    daprd retries `"success"` in lower case as an unknown status.
    """

    SUCCESS = "SUCCESS"
    """Processed: the message is done."""
    RETRY = "RETRY"
    """Deliver it again, after the retry policy's delay."""
    DROP = "DROP"
    """Never deliver it again: it goes to the dead-letter topic, if there is one."""

    def __str__(self) -> str:
        return self.value

    @property
    def body(self) -> bytes:
        """The JSON body daprd reads as this status: `{"status":"DROP"}`."""
        return _BODIES[self]

    def response(self, status_code: int = 200) -> Response:
        """The HTTP answer daprd reads as this status."""
        return Response(self.body, status_code=status_code, media_type="application/json")


_BODIES = {status: b'{"status":"%s"}' % status.value.encode() for status in Status}

SUCCESS = Status.SUCCESS
"""`Status.SUCCESS`: processed, the message is done."""
RETRY = Status.RETRY
"""`Status.RETRY`: deliver it again, after the retry policy's delay."""
DROP = Status.DROP
"""`Status.DROP`: never deliver it again; to the dead-letter topic, if there is one."""


class HandlerNote:
    """What a handler tells the embedded delivery engine besides its answer.

    The engine sets a fresh note in `NOTE` around each in-process POST; the handler
    fills it: the data failed validation (`invalid`: the errors), or the handler
    raised (`error`). The engine then logs it with the attempt (a traceback once per
    message) and reports it. With no note (under daprd), the handler logs it itself.
    """

    __slots__ = ("error", "handler", "invalid")

    def __init__(self) -> None:
        self.handler = ""
        self.invalid: str | None = None
        self.error: BaseException | None = None


NOTE: contextvars.ContextVar[HandlerNote | None] = contextvars.ContextVar("fastapi_dapr_note", default=None)
