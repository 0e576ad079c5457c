"""Routing rules: CEL expressions over the event, evaluated as daprd does (reference 3.5)."""

from __future__ import annotations

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
                raise RoutingError(f"match {match!r} failed: {exc}") from exc
            if isinstance(result, Exception):
                raise RoutingError(f"match {match!r} failed: {result}")
            if not isinstance(result, celtypes.BoolType):
                raise RoutingError(f"the result of match expression {match} was not a boolean")
            if result:
                return path
        return self.default
