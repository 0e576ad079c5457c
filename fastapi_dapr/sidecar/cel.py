"""Routing rules: CEL expressions over the event, evaluated as daprd does (reference 3.5)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__: list[str] = []


class RoutingError(Exception):
    """A rule could not be evaluated, or did not give a boolean."""


def _as_go_json(value: Any) -> Any:
    # daprd decodes the event with json.Unmarshal into interface{}: every
    # number is a float64, so every number is a CEL double.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {key: _as_go_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_go_json(item) for item in value]
    return value


def _written(tree: Any) -> str:
    """A part of the rule, as written (from its parse tree: never a value of the event)."""
    from celpy.celparser import tree_dump

    return " ".join(tree_dump(tree).split())


def _failure(error: Exception) -> str:
    """Why a rule failed on a message, in words, without the message's values.

    celpy's own text may hold a value of the event (a key, a string it could not
    convert) or the whole activation, payload included; only the part of the rule
    that failed and the kind of failure are said, and a missing field, the common
    case, is answered with the `has()` test that avoids it (reference 3.5).
    """
    args = error.args
    kind = args[1] if len(args) > 1 and isinstance(args[1], type) else type(error)
    tree = getattr(error, "tree", None)
    where = f"{_written(tree)}: " if tree is not None else ""
    if issubclass(kind, KeyError):
        if str(args[0] if args else "").startswith("undeclared reference"):
            return f"{where}not defined (the only variable a rule has is event)"
        if tree is not None and tree.data == "member_dot":
            return f"{where}no such field in this event; test for it first with has({_written(tree)})"
        if tree is not None and tree.data == "member_index" and len(tree.children) == 2:
            container, key = (_written(child) for child in tree.children)
            return f"{where}no such key in this event; test for it first with {key} in {container}"
        return f"{where}no such field or key in this event; test for it first with has()"
    if issubclass(kind, IndexError):
        return f"{where}the index is out of range; test the list's size() first"
    if issubclass(kind, TypeError):
        types = sorted(set(re.findall(r"celtypes\.(\w+?)Type\b", str(args[0] if args else ""))))
        of = f" ({', '.join(name.lower() for name in types)})" if types else ""
        return f"{where}no such operation for these types{of}"
    if issubclass(kind, ValueError):
        return f"{where}a value could not be converted"
    if issubclass(kind, ArithmeticError):
        return f"{where}an arithmetic error ({kind.__name__})"
    text = args[0] if args and isinstance(args[0], str) else ""
    # celpy's fixed texts ("match error"); anything that may quote a value is left out.
    plain = 0 < len(text) <= 60 and not any(mark in text for mark in "'\"(")
    return f"{where}{text if plain else kind.__name__}"


class Rules:
    """The rules of one subscription, in order, then its default path."""

    def __init__(self, rules: Sequence[tuple[str, str]], default: str | None) -> None:
        self._rules: list[tuple[str, Any, str]] = []
        environment = None
        for match, path in rules:
            program = None
            if match.strip():  # an empty match always matches
                if environment is None:
                    import celpy  # only subscriptions with rules pay for the CEL implementation

                    environment = celpy.Environment()
                program = environment.program(environment.compile(match))
            self._rules.append((match, program, path))
        self.default = default

    def rules(self) -> list[tuple[str, str]]:
        """(match, path) pairs, in evaluation order, without the default."""
        return [(match, path) for match, _, path in self._rules]

    def route(self, event: Mapping[str, Any]) -> str | None:
        """The path of the first rule that matches, the default, or None."""
        activation: dict[str, Any] | None = None
        for match, program, path in self._rules:
            if program is None:
                return path
            if activation is None:  # the first rule with a program: CEL is loaded
                import celpy.adapter
                from celpy import celtypes

                activation = {"event": celpy.adapter.json_to_cel(_as_go_json(dict(event)))}
            try:
                result = program.evaluate(activation)
            except Exception as exc:  # celpy's evaluation errors have no common base
                result = exc
            if isinstance(result, Exception):
                # Not chained: celpy's error holds the activation, the message included.
                raise RoutingError(f"match {match!r} failed: {_failure(result)}") from None
            if not isinstance(result, celtypes.BoolType):
                raise RoutingError(f"the result of match expression {match} was not a boolean")
            if result:
                return path
        return self.default
