"""Media types: the one reading of a `Content-Type` value, its type and its parameters.

Callers differ on purpose in how exactly they compare, as the parts of Dapr they mirror
do: HTTP reads the type without surrounding whitespace and in any case; components-contrib
compares it unstripped (` application/json` is not JSON there), and the bulk subscription
entry daprd writes is compared case-sensitively. `media_type`'s flags say which.
"""

from __future__ import annotations

__all__: list[str] = []


def media_type(content_type: str, *, strip: bool = True, lower: bool = True) -> str:
    """What comes before the first `;` of `content_type`: without surrounding whitespace
    unless `strip` is False, in lower case unless `lower` is False."""
    media = content_type.partition(";")[0]
    if strip:
        media = media.strip()
    if lower:
        media = media.lower()
    return media


def parameter(content_type: str, name: str) -> str | None:
    """The value of the parameter `name` (lower case; matched in any case), its quotes
    stripped; None when it is not there or has an empty value."""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == name and value:
            return value.strip('"')
    return None


def is_json(media: str) -> bool:
    """`application/json`, `text/json` and any `+json` suffix (a media type from `media_type`)."""
    return media in ("application/json", "text/json") or media.endswith("+json")


def is_text(media: str) -> bool:
    """A media type read as text: `text/*` and `application/xml`."""
    return media.startswith("text/") or media == "application/xml"


def is_content_type(content_type: str, expected: str) -> bool:
    """components-contrib's exact test: what comes before `;`, in any case, unstripped."""
    return media_type(content_type, strip=False) == expected
