"""What a subscription handler tells the sidecar about a message (reference 3.3)."""

from __future__ import annotations

import enum

from starlette.responses import Response

__all__ = ["DROP", "RETRY", "SUCCESS", "Status"]


class Status(str, enum.Enum):
    """The processing status of a delivered message.

    The values are the exact, case-sensitive strings daprd matches: daprd
    retries `"success"` in lower case as an unknown status (reference 3.3).
    """

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"

    def __str__(self) -> str:
        return self.value

    @property
    def body(self) -> bytes:
        return _BODIES[self]

    def response(self, status_code: int = 200) -> Response:
        """The HTTP answer daprd reads as this status."""
        return Response(self.body, status_code=status_code, media_type="application/json")


_BODIES = {status: b'{"status":"%s"}' % status.value.encode() for status in Status}

SUCCESS = Status.SUCCESS
RETRY = Status.RETRY
DROP = Status.DROP
