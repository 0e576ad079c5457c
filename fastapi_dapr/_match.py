"""Routing rules' `match` expressions, checked once where a subscription is registered or loaded.

daprd declares every name a rule uses (`pkg/expr`) but binds only `event` when it
evaluates one (reference 3.5), so a rule that names anything else
(`data.amount > 5` for `event.data.amount > 5`) loads there and then fails on
every message. Here it is refused where it is written. cel-python parses
without checking names (it has no declarations checker), so the names are read
from its parse tree: every identifier must be `event`, a CEL type name, or the
variable of a comprehension macro (`exists(x, ...)`) in whose scope it stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._exceptions import SubscriptionError

__all__: list[str] = []

# The names CEL itself defines as values: its type names (`type(x) == string`), and the
# root of the protobuf wrapper types (`google.protobuf.Int32Value{value: 1}`). `type` alone,
# the type of types, is left out: in a rule it is far more often a mistake for `event.type`.
_BUILT_IN = frozenset(
    {"bool", "bytes", "double", "int", "list", "map", "null_type", "string", "uint", "google"}
)
_VARIABLE = "event"
# Macros whose first argument is a variable bound in the arguments after it.
_COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
# CloudEvent attributes: a rule naming one bare most likely meant `event.<it>`.
_ATTRIBUTES = frozenset(
    {
        "data", "data_base64", "datacontenttype", "expiration", "id", "pubsubname", "source",
        "specversion", "subject", "time", "topic", "traceid", "traceparent", "tracestate", "type",
    }
)  # fmt: skip


def _lone_identifier(tree: Any) -> str | None:
    """The name when `tree` is nothing but one identifier (a macro's variable)."""
    from celpy import Expression  # cel-python's name for a parse tree (lark's)

    while isinstance(tree, Expression):
        if tree.data == "ident":
            return str(tree.children[0])
        children = [child for child in tree.children if child is not None]
        if len(children) != 1:
            return None
        tree = children[0]
    return None


def _free_names(tree: Any) -> Iterator[str]:
    """The identifiers of a parse tree not bound by a macro, in the order they are written.

    Walked with a stack of its own: a deeply nested expression must not exhaust Python's.
    """
    from celpy import Expression

    stack: list[tuple[Any, frozenset[str]]] = [(tree, frozenset())]
    while stack:
        node, bound = stack.pop()
        if node.data == "ident":
            if str(node.children[0]) not in bound:
                yield str(node.children[0])
            continue
        if node.data == "dot_ident":  # `.name`: the root scope, never a macro's variable
            yield str(node.children[0])
            continue
        children = [child for child in node.children if isinstance(child, Expression)]
        if node.data == "member_dot_arg" and str(node.children[1]) in _COMPREHENSIONS and len(children) == 2:
            target, arguments = children
            variable = _lone_identifier(arguments.children[0]) if arguments.children else None
            if variable is not None and len(arguments.children) >= 2:
                inner = bound | {variable}
                stack.extend((argument, inner) for argument in reversed(arguments.children[1:]))
                stack.append((target, bound))
                continue
        stack.extend((child, bound) for child in reversed(children))


def match_problem(expression: str) -> str | None:
    """Why a rule's match cannot work (it does not parse, or names what a rule does not
    have), as words to follow the expression; None when it can."""
    if not expression.strip():
        return None  # daprd: an empty match always matches
    import celpy  # only apps with routing rules pay for it

    environment = celpy.Environment()
    try:
        tree = environment.compile(expression)
    except Exception as exc:  # celpy raises its own parse error types
        return f"is not a valid CEL expression: {str(exc).strip()}"
    for name in _free_names(tree):
        if name != _VARIABLE and name not in _BUILT_IN:
            hint = f"; did you mean event.{name}?" if name in _ATTRIBUTES else ""
            return f"uses {name!r}, which is not defined: the only variable a rule has is event{hint}"
    return None


def check_match(expression: str, where: str) -> None:
    """Refuse a match that cannot work, naming where it was written (`SubscriptionError`).

    daprd refuses the whole subscription list when one expression does not
    compile (reference 2.1), so a typo must stop the app, not every message.
    """
    problem = match_problem(expression)
    if problem is not None:
        raise SubscriptionError(f"{where}: match {expression!r} {problem}")
