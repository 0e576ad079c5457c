"""The field types of Dapr's resources, and the `ResourceError` a field's problem becomes.

Resources are frozen pydantic models (`resource_models.py`, `resiliency_resource.py`)
built from these pieces: `ResourceModel`, their base (camelCase aliases, strict
types, unknown fields ignored unless a model refuses them), and annotated types
for what YAML writes in its own way: names that YAML may have read as numbers, Go
durations, daprd's dynamic values, status codes and CEL expressions. Every
problem is raised as a `PydanticCustomError` of type `resource` whose message is
the one shown; `resource_error` turns a `ValidationError` into the `ResourceError`
naming the file, the kind, the resource and the field (from the error's location).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from .._exceptions import ResourceError
from .._go import parse_duration, parse_go_int

__all__: list[str] = []

T = TypeVar("T")
MAX_EXPRESSION = 100_000  # characters of a CEL expression: cel-go's default limit, which daprd keeps
YAML = {"yaml": True}  # the validation context of a document read from a file
_NOUNS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "dict": "a mapping",
    "list": "a list",
    "NoneType": "null",
}
_EXPECTED = {  # pydantic's error types of a value of the wrong type: what it must be
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "dict_type": "a mapping",
    "list_type": "a list",
}


def type_name(value: Any) -> str:
    return _NOUNS.get(type(value).__name__, type(value).__name__)


def shown(value: Any, limit: int = 60) -> str:
    """`repr` of a value the user wrote, cut short: a message must not carry a megabyte."""
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type_name(value)
    return text if len(text) <= limit else text[:limit] + "..."


def problem(text: str, at: str = "") -> PydanticCustomError:
    """The error of a field; `at` continues the field's path (`.name`, `[1].name`) below the value checked."""
    return PydanticCustomError("resource", "{problem}", {"problem": text, "at": at})


class JsonSchema:
    """An annotation giving a field's JSON Schema (a fresh copy each time: pydantic 2.7 adds to it)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = dict(schema)

    def __get_pydantic_json_schema__(
        self, _core: CoreSchema, _handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return copy.deepcopy(self.schema)


class ResourceModel(BaseModel):
    """A part of a resource as YAML writes it: camelCase aliases, strict types, frozen."""

    model_config = ConfigDict(frozen=True, strict=True, populate_by_name=True, extra="ignore")
    shape: ClassVar[str] = "a mapping"  # what a value of another type is told it must be
    noun: ClassVar[str] = "this part"  # in "is not a field of ...", for a model that refuses unknown fields
    _aliases: ClassVar[frozenset[str]] = frozenset()
    _by_name: ClassVar[frozenset[str]] = frozenset()  # Python names that are not also aliases
    _shapes: ClassVar[dict[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = cls.model_fields
        cls._aliases = frozenset(field.alias or name for name, field in fields.items())
        cls._by_name = frozenset(fields) - cls._aliases
        ResourceModel._shapes[cls.__name__] = cls.shape

    @model_validator(mode="before")
    @classmethod
    def _yaml_keys(cls, data: Any, info: ValidationInfo) -> Any:
        """In a file, only the camelCase names are fields (daprd ignores or refuses the others)."""
        if not (isinstance(data, dict) and info.context and info.context.get("yaml")):
            return data
        if cls.model_config.get("extra") == "forbid":
            for key in data:
                if key not in cls._aliases:
                    known = ", ".join(sorted(cls._aliases))
                    raise problem(f"is not a field of {cls.noun} ({known})", at=f".{key}")
        if cls._by_name.intersection(data):
            return {key: value for key, value in data.items() if key not in cls._by_name}
        return data


def _empty_if_null(value: Any) -> Any:
    return {} if value is None else value


def _names(value: Any) -> Any:
    """A mapping of names: YAML may have read `1234` or `true` as a number or a boolean."""
    if not isinstance(value, dict):
        return _empty_if_null(value)
    result = {}
    for key, item in value.items():
        if isinstance(key, bool):
            key = "true" if key else "false"
        elif not isinstance(key, (str, int)):
            raise problem(f"a key must be a name, not {type_name(key)} {shown(key)}")
        result[str(key)] = item
    return result


Section = Annotated[T, BeforeValidator(_empty_if_null)]  # a nested mapping; null is an empty one
Names = Annotated[dict[str, T], BeforeValidator(_names)]  # null is an empty mapping


def dynamic_value(value: Any) -> str:
    """daprd's `DynamicValue.String()`: strings as they are, other JSON as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"))


def _scalar_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise problem(f"must be a string, not {type_name(value)}")
    return dynamic_value(value)


_ANY_JSON = ["string", "number", "boolean", "array", "object", "null"]
DynamicValue = Annotated[  # a metadata value: any JSON, taken as its text (daprd's DynamicValue)
    str,
    PlainValidator(dynamic_value),
    JsonSchema({"type": _ANY_JSON, "description": "a string; other values as their JSON text"}),
]
ScalarText = Annotated[  # a `map[string]string` value: a scalar, taken as its text
    str,
    PlainValidator(_scalar_text),
    JsonSchema({"type": ["string", "number", "boolean", "null"]}),
]


def _version(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise problem(f"must be a string or an integer, not {type_name(value)}")
    return str(value)


Version = Annotated[str, PlainValidator(_version), JsonSchema({"type": ["string", "integer"]})]


def _app_id(value: Any) -> str:
    if not isinstance(value, str):
        raise problem("must be an app id string")
    return value


AppId = Annotated[str, PlainValidator(_app_id), JsonSchema({"type": "string"})]

_DURATION_SCHEMA = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^[+-]?([0-9]+|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$",
        },
        {"type": "integer"},
    ],
    "description": "a Go duration such as 5s or 1m30s, or an integer of milliseconds",
}


def _duration(negative: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        """daprd's parseDuration: an integer of milliseconds, else a Go duration."""
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise problem(f"must be a duration such as '5s', not {type_name(value)}")
        try:
            seconds = parse_duration(str(value), integer_unit=1e-3)
        except ValueError:
            raise problem(f"{shown(value)} is not a duration") from None
        if seconds < 0 and not negative:
            raise problem(f"{shown(value)} is negative")
        return seconds

    return check


Duration = Annotated[float, PlainValidator(_duration(negative=True)), JsonSchema(_DURATION_SCHEMA)]  # seconds
PolicyDuration = Annotated[float, PlainValidator(_duration(negative=False)), JsonSchema(_DURATION_SCHEMA)]


class StatusCodes:
    """The annotation of `matching` codes: a comma-separated list of codes and ranges (`429,500-599`)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __get_pydantic_core_schema__(self, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, _core: CoreSchema, _handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": ["string", "integer"],
            "description": f"codes from {self.low} to {self.high} and ranges of them, such as 429,500-599",
        }

    def check(self, text: Any) -> frozenset[int] | None:
        if text is None or text == "":
            return None
        if not isinstance(text, (str, int)) or isinstance(text, bool):
            raise problem("must be a string of codes and ranges such as '429,500-599'")
        low, high = self.low, self.high
        codes: set[int] = set()
        for part in str(text).split(","):
            part = part.strip(" ")  # daprd refuses spaces around a code; they are accepted here
            if not part:
                continue
            start_text, dash, end_text = part.partition("-")
            try:  # as daprd's strconv.Atoi: ASCII digits, an optional sign
                start = parse_go_int(start_text)
                end = parse_go_int(end_text) if dash else start
            except ValueError:
                raise problem(f"{shown(part)} is not a code or a range of codes") from None
            if not (low <= start <= high and low <= end <= high):
                raise problem(f"{part!r}: codes go from {low} to {high}")
            if end < start:
                raise problem(f"{part!r}: the range ends before it starts")
            codes.update(range(start, end + 1))
        return frozenset(codes)


def expression(text: str) -> str:
    """A CEL expression, refused when longer than cel-go would take."""
    if len(text) > MAX_EXPRESSION:
        raise problem(f"the CEL expression is over {MAX_EXPRESSION} characters (cel-go's limit)")
    return text


Expression = Annotated[str, AfterValidator(expression)]


def _path(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _problem(error: Mapping[str, Any]) -> str:
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "resource":
        return str(context["problem"])
    if kind == "missing":
        return "is required"
    if kind in _EXPECTED:  # null for a value that has no default: as if it were not written
        return "is required" if value is None else f"must be {_EXPECTED[kind]}, not {type_name(value)}"
    if kind in ("model_type", "model_attributes_type"):
        shape = ResourceModel._shapes.get(context.get("class_name", ""), "a mapping")
        return f"must be {shape}, not {type_name(value)}"
    if kind == "literal_error":
        return f"must be {context.get('expected')}, not {shown(value)}"
    return str(error["msg"])  # pragma: no cover - every check of the models is one of the above


def resource_error(
    exc: ValidationError, source: str, kind: str, name: Any, number: int | None
) -> ResourceError:
    """The first problem of a resource, naming the file, the kind, the resource and the field.

    A resource whose name cannot be read is named by its document's number.
    """
    error = exc.errors(include_url=False)[0]
    field = _path(error["loc"]) + str((error.get("ctx") or {}).get("at", ""))
    if isinstance(name, str):
        what = f"{kind} {name!r}"
    else:
        what = f"{kind} in document {number}" if number is not None else kind
    return ResourceError(f"{source}: {what}: {field}: {_problem(error)}")
