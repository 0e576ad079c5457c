"""One YAML document of a resource, and the error every problem in it becomes.

`Document.error` names the file, the kind, the resource and the field; the
readers of Component, Subscription, HTTPEndpoint and Resiliency resources
take their fields through it, so a value of the wrong type is one clear
`ResourceError` whatever field it is in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._exceptions import ResourceError

__all__: list[str] = []

MAX_EXPRESSION = 100_000  # characters of a CEL expression: cel-go's default limit, which daprd keeps


class Document:
    """One YAML document, with the context every error message needs."""

    def __init__(self, source: str, kind: str, name: str, raw: Mapping[str, Any]) -> None:
        self.source = source
        self.kind = kind
        self.name = name
        self.raw = raw

    def error(self, field: str, problem: str) -> ResourceError:
        return ResourceError(f"{self.source}: {self.kind} {self.name!r}: {field}: {problem}")

    def get(
        self,
        mapping: Mapping[str, Any],
        key: str,
        field: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        required: bool = False,
    ) -> Any:
        if key not in mapping or mapping[key] is None:
            if required:
                raise self.error(field, "is required")
            return default
        value = mapping[key]
        kinds = (kind,) if isinstance(kind, type) else kind
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(article(k.__name__) for k in kinds)
            raise self.error(field, f"must be {expected}, not {type_name(value)}")
        return value

    def mapping(self, mapping: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self.get(mapping, key, field, dict, default={})
        return result

    def string_map(self, mapping: Mapping[str, Any], key: str, field: str) -> dict[str, str]:
        """A `map[string]string`: scalars are taken as their text, a list or a mapping is refused."""
        result = {}
        for name, value in self.mapping(mapping, key, field).items():
            name = self.key(name, field)
            if isinstance(value, (dict, list)):
                raise self.error(f"{field}.{name}", f"must be a string, not {type_name(value)}")
            result[name] = dynamic_value(value)
        return result

    def key(self, key: Any, field: str) -> str:
        """A mapping key used as a name: YAML may have read `1234` or `true` as a number or a boolean."""
        if isinstance(key, bool):
            return "true" if key else "false"
        if isinstance(key, (str, int)):
            return str(key)
        raise self.error(field, f"a key must be a name, not {type_name(key)} {shown(key)}")

    def scopes(self) -> tuple[str, ...]:
        """The app ids of `scopes`; none means every app."""
        scopes = self.get(self.raw, "scopes", "scopes", list, default=[])
        for index, scope in enumerate(scopes):
            if not isinstance(scope, str):
                raise self.error(f"scopes[{index}]", "must be an app id string")
        return tuple(scopes)

    def items(self, mapping: Mapping[str, Any], key: str, field: str) -> list[tuple[str, Any]]:
        """The entries of a mapping of names, each name checked."""
        return [(self.key(name, field), value) for name, value in self.mapping(mapping, key, field).items()]


def article(noun: str) -> str:
    names = {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "dict": "a mapping",
        "list": "a list",
        "NoneType": "null",
    }
    return names.get(noun, noun)


def type_name(value: Any) -> str:
    return article(type(value).__name__)


def shown(value: Any, limit: int = 60) -> str:
    """`repr` of a value the user wrote, cut short: a message must not carry a megabyte."""
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type_name(value)
    return text if len(text) <= limit else text[:limit] + "..."


def dynamic_value(value: Any) -> str:
    """daprd's `DynamicValue.String()`: strings as they are, other JSON as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"))


def check_length(doc: Document, expression: str, field: str) -> None:
    if len(expression) > MAX_EXPRESSION:
        raise doc.error(field, f"the CEL expression is over {MAX_EXPRESSION} characters (cel-go's limit)")
