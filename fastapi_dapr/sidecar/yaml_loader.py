"""Resource files read as YAML, with bounds on what a small file can cost.

A YAML alias is a reference, and PyYAML keeps it one, but anything that walks
the result (JSON text of a metadata value, `str()` of a name) copies it: nine
nested aliases in 658 bytes expand to a billion nodes. So the size, the nesting
depth and the expansion of aliases are checked while the file is composed,
before anything is built from it. Aliasing is bounded by the rule of Go's YAML
libraries (`yaml.v2` and `yaml.v3`, the first under daprd's `sigs.k8s.io/yaml`).

Where YAML 1.1 would give Python objects that are not JSON, the value is read
as Go reads it: a date stays text (as `yaml.v3` keeps it), `!!binary` is the
text it encodes, a set is a mapping of nulls, and an integer must fit in 64 bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

from .._exceptions import ResourceError

try:  # libyaml's parser when PyYAML was built with it: about seven times faster
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML's wheels all have libyaml
    from yaml.parser import Parser as _PythonParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _PythonParser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PythonParser.__init__(self)


__all__: list[str] = []

MAX_FILE_SIZE = 1024 * 1024  # bytes; daprd reads at most 64 KiB a document (bufio.Scanner's limit)
MAX_DEPTH = 100  # nested sequences and mappings; Go's YAML allows 10,000, Python's stack fewer
MAX_NODES = 100_000  # written in one file (aliases not counted): about 40 MB and a second or two
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class LimitError(yaml.YAMLError):
    """A document over one of the bounds: its message says which, and where."""


def allowed_alias_share(nodes: int) -> float:
    """Go's `allowedAliasRatio`: the share of a document's nodes that may come from aliases."""
    low, high = 400_000, 4_000_000
    if nodes <= low:
        return 0.99
    if nodes >= high:
        return 0.10
    return 0.99 - 0.89 * (nodes - low) / (high - low)


class _BoundedComposer(Composer):
    """PyYAML's composer, counting each document's nodes as they would be once its aliases expand."""

    def __init__(self) -> None:
        super().__init__()
        self.document = 0
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes once expanded; only complete nodes

    def compose_document(self) -> Node | None:
        self.document += 1
        self._sizes = {}
        root = super().compose_document()
        if root is not None:
            expanded = self._sizes[id(root)]
            copies = expanded - len(self._sizes)  # every node is written once; the rest is aliases
            # Go's rule, checked once for the whole document (Go checks as it decodes).
            if copies > 100 and expanded > 1000 and copies / expanded > allowed_alias_share(expanded):
                raise LimitError(
                    f"document {self.document}: its aliases expand it to {expanded} nodes, {copies} of "
                    f"them copies: more than {allowed_alias_share(expanded):.0%} (Go's YAML rule)"
                )
        self._sizes = {}
        return root

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]  # the parser's
        alias = isinstance(event, AliasEvent)
        nested = isinstance(event, (SequenceStartEvent, MappingStartEvent))
        if not alias:
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise LimitError(
                    f"document {self.document}, line {event.start_mark.line + 1}: "
                    f"the file has more than {MAX_NODES} nodes"
                )
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise LimitError(
                    f"document {self.document}, line {event.start_mark.line + 1}: "
                    f"nested more than {MAX_DEPTH} levels deep"
                )
        try:
            node = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
        assert node is not None
        if alias:
            if id(node) not in self._sizes:
                raise LimitError(
                    f"document {self.document}, line {event.start_mark.line + 1}: the alias "
                    f"*{event.anchor} is inside the node it names"
                )
            return node
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self._sizes[id(key)] + self._sizes[id(value)] for key, value in node.value)
        self._sizes[id(node)] = size
        return node


class _Constructor(SafeConstructor):
    """PyYAML's safe constructor; what it would raise besides a YAMLError becomes a ConstructorError."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, LookupError) as exc:  # `!!int 09`, `!!bool maybe`, a 5,000-digit integer
            raise ConstructorError(None, None, f"{node.tag}: {exc}", node.start_mark) from None

    def construct_yaml_int(self, node: Any) -> int:
        number = super().construct_yaml_int(node)
        if not -(2**63) <= number < 2**64:
            raise ConstructorError(None, None, "an integer does not fit in 64 bits", node.start_mark)
        return number

    def construct_yaml_binary(self, node: Any) -> Any:
        return super().construct_yaml_binary(node).decode("utf-8", errors="replace")


_Constructor.yaml_constructors = {
    **SafeConstructor.yaml_constructors,
    "tag:yaml.org,2002:int": _Constructor.construct_yaml_int,
    "tag:yaml.org,2002:binary": _Constructor.construct_yaml_binary,
    _TIMESTAMP: SafeConstructor.construct_yaml_str,
    "tag:yaml.org,2002:set": SafeConstructor.construct_yaml_map,
}


class _Resolver(Resolver):
    yaml_implicit_resolvers = {  # noqa: RUF012  # PyYAML's own class attribute
        first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP]
        for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    }


class _Loader(_BoundedComposer, _Parser, _Constructor, _Resolver):
    # The composer comes before libyaml's parser, which has a composer of its own.
    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _BoundedComposer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


def read_text(path: Path) -> str:
    """The file's text, or `OSError`/`UnicodeDecodeError`; `LimitError` over `MAX_FILE_SIZE`."""
    with path.open("rb") as file:
        data = file.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise LimitError(f"the file is over {MAX_FILE_SIZE} bytes (1 MiB), the most a resource file may be")
    return data.decode("utf-8")


def load_all(text: str) -> Iterator[Any]:
    """Each document of `text`; `yaml.YAMLError` (a `LimitError` for a bound) when one cannot be read."""
    loader = _Loader(text)
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            yield loader.get_data()
    finally:
        loader.dispose()


def read_documents(path: Path) -> Iterator[Any]:
    """Each document of a resource file; `ResourceError` naming the file when one cannot be read."""
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ResourceError(f"{path}: cannot be read: {exc}") from None
    except LimitError as exc:
        raise ResourceError(f"{path}: {exc}") from None
    try:
        yield from load_all(text)
    except LimitError as exc:
        raise ResourceError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ResourceError(f"{path}: is not valid YAML: {exc}") from None
