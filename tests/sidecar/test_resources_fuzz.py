"""Random and mutated resource files fed to the loader (issue 14, the loader's property test).

Whatever a resources folder holds, loading it ends in one of two ways: the
resources, or one `ResourceError` naming the file. Never another exception, and
never more than a bounded time and memory, whatever aliases, nesting, types or
truncation the file has. The inputs are valid Component, Subscription,
HTTPEndpoint, Resiliency and Configuration documents, mutated as a tree (a value
replaced by one of another type, keys added or removed, subtrees shared so that
YAML writes aliases, deep nesting, alias bombs) or as text (cut, spliced with YAML
syntax, duplicated). Examples are derandomized and no database is kept, so CI runs
the same inputs every time; the counts are printed at the end of the run.
"""

from __future__ import annotations

import collections
import copy
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapi_dapr import ResourceError
from fastapi_dapr.sidecar.configuration import load_configuration
from fastapi_dapr.sidecar.resources import load_resources

pytestmark = pytest.mark.fuzz  # thousands of generated inputs: the full suite runs them, the fast loop not

SECONDS = 5.0  # for one input; a valid file of this size takes a few milliseconds
BYTES = 64 * 1024 * 1024  # traced memory for one input

SEEDS: list[dict[str, Any]] = [
    {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "events", "namespace": "default"},
        "spec": {
            "type": "pubsub.in-memory",
            "version": "v1",
            "initTimeout": "5s",
            "ignoreErrors": False,
            "metadata": [
                {"name": "maxQueueLength", "value": 10},
                {"name": "publishTimeout", "value": "1s"},
                {"name": "fromEnv", "envRef": "HOME"},
                {"name": "secret", "secretKeyRef": {"name": "s", "key": "k"}},
            ],
        },
        "auth": {"secretStore": "vault"},
        "scopes": ["app"],
    },
    {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "orders"},
        "spec": {
            "pubsubname": "events",
            "topic": "orders",
            "route": "/orders",
            "metadata": {"rawPayload": "true"},
            "deadLetterTopic": "dead",
            "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 100},
        },
        "scopes": ["app"],
    },
    {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": "routed"},
        "spec": {
            "pubsubname": "events",
            "topic": "payments",
            "routes": {"rules": [{"match": 'event.type == "big"', "path": "/big"}], "default": "/small"},
        },
    },
    {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "HTTPEndpoint",
        "metadata": {"name": "api"},
        "spec": {
            "baseUrl": "https://api.example.com:8443/v1",
            "headers": [{"name": "Accept-Language", "value": "en"}, {"name": "X-N", "value": 3}],
            "clientTLS": {"rootCA": {"secretKeyRef": {"name": "ca"}}},
        },
        "auth": {"secretStore": "vault"},
    },
    {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": "policies"},
        "spec": {
            "policies": {
                "timeouts": {"general": "5s", "fast": 250},
                "retries": {
                    "retryForever": {"policy": "exponential", "maxInterval": "15s", "maxRetries": -1},
                    "some": {
                        "policy": "constant",
                        "duration": "1s",
                        "matching": {"httpStatusCodes": "429,500-599"},
                    },
                },
                "circuitBreakers": {
                    "cb": {"maxRequests": 1, "timeout": "30s", "trip": "consecutiveFailures > 3"}
                },
            },
            "targets": {
                "apps": {"payments": {"timeout": "general", "retry": "some", "circuitBreaker": "cb"}},
                "components": {
                    "events": {"outbound": {"retry": "retryForever"}, "inbound": {"timeout": "fast"}}
                },
            },
        },
        "scopes": ["app"],
    },
    {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "config"},
        "spec": {"tracing": {"samplingRate": "1"}, "features": [{"name": "x", "enabled": True}]},
    },
]

ODD_TEXT = [
    "",
    "5s",
    "\u0661\u0660s",  # Arabic-Indic digits
    " 5s",
    "-1",
    "1e400",
    "0x10",
    "yes",
    "2024-01-31",
    "http://[::1",
    "http://api:99999",
    "http://a b",
    "line\r\nx-injected: 1",
    "dapr.io/v1aplha1",
    "Componnet",
    "a/b",
    "..",
    "event.type ==",
    "(" * 50,
    "DAPR_API_TOKEN",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(ODD_TEXT),
)
keys = st.one_of(
    st.text(max_size=12), st.sampled_from(["name", "value", "spec", "metadata", "kind"]), scalars
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=16,
)

SNIPPETS = [
    "&a ",
    "*a",
    "*undefined",
    "<<: *a\n",
    "<<: [*a, *a]\n",
    "!!binary ",
    "!!set ",
    "!!timestamp ",
    "!!int ",
    "!!python/object:os.system ",
    "!custom ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "? ",
    "- ",
    ": ",
    "'",
    '"',
    "#",
    "\t",
    "\x00",
    "\ufeff",
    "\u2028",
    "[" * 150,
    "{a: " * 120,
    "\n" + "  " * 40,
]


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


def _nest(value: Any, depth: int, as_mapping: bool) -> Any:
    for _ in range(depth):
        value = {"n": value} if as_mapping else [value]
    return value


def _laughs(width: int, levels: int) -> Any:
    laughs: Any = "lol"
    for _ in range(levels):
        laughs = [laughs] * width  # one object, many times: YAML writes an anchor and aliases
    return laughs


# What the composite strategies below draw from, built once: building them again on each
# draw cost more than drawing from them.
seeds = st.sampled_from(SEEDS)
one_to_three = st.integers(1, 3)
one_to_four = st.integers(1, 4)
zero_to_three = st.integers(0, 3)
tree_operations = st.sampled_from(["replace", "add", "delete", "share", "nest", "laughs", "loop", "long"])
nest_depths = st.integers(1, 150)
laugh_widths = st.integers(2, 10)
laugh_levels = st.integers(1, 10)
long_texts = st.sampled_from(["x", "5", "(", "["])
long_lengths = st.integers(1000, 100_000)
seed_lists = st.lists(seeds, min_size=1, max_size=2)
text_operations = st.sampled_from(["cut", "insert", "delete", "duplicate", "random"])
snippets = st.sampled_from(SNIPPETS)
deleted_lengths = st.integers(1, 40)
duplicated_lengths = st.integers(1, 200)
one_to_five = st.integers(1, 5)
random_texts = st.text(max_size=20)


@st.composite
def mutated_tree(draw: st.DrawFn) -> list[Any]:
    """One to three seed documents, each mutated as a tree a few times."""
    documents = [copy.deepcopy(draw(seeds)) for _ in range(draw(one_to_three))]
    for _ in range(draw(one_to_four)):
        index = draw(st.integers(0, len(documents) - 1))
        parent: Any = None
        key: Any = None
        node: Any = documents[index]
        while _children(node) and draw(zero_to_three) > 0:  # walk down a random path
            parent, key = node, draw(st.sampled_from(_children(node)))
            node = node[key]
        operation = draw(tree_operations)
        if operation == "replace":
            replacement = draw(values)
        elif operation == "add" and isinstance(node, dict):
            node[draw(keys)] = draw(values)
            continue
        elif operation == "delete" and parent is not None:
            del parent[key]
            continue
        elif operation == "share":  # the same object twice: an anchor and an alias in the YAML
            replacement = [node, node] if draw(st.booleans()) else {"first": node, "again": node}
        elif operation == "nest":
            replacement = _nest(node, draw(nest_depths), draw(st.booleans()))
        elif operation == "laughs":
            replacement = _laughs(draw(laugh_widths), draw(laugh_levels))
        elif operation == "loop":
            replacement = [node]
            replacement.append(replacement)  # a node that contains itself
        elif operation == "long":
            replacement = draw(long_texts) * draw(long_lengths)
        else:
            continue
        if parent is None:
            documents[index] = replacement
        else:
            parent[key] = replacement
    return documents


def dump(documents: list[Any], flow: bool, unicode: bool) -> str:
    return yaml.dump_all(
        documents, Dumper=yaml.CSafeDumper, default_flow_style=flow, allow_unicode=unicode, sort_keys=False
    )


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """Seed documents as YAML text, cut, spliced, duplicated."""
    documents = draw(seed_lists)
    text = dump(documents, draw(st.booleans()), True)
    for _ in range(draw(one_to_four)):
        position = draw(st.integers(0, len(text)))
        operation = draw(text_operations)
        if operation == "cut":
            text = text[:position]
        elif operation == "insert":
            text = text[:position] + draw(snippets) + text[position:]
        elif operation == "delete":
            text = text[:position] + text[position + draw(deleted_lengths) :]
        elif operation == "duplicate":
            end = position + draw(duplicated_lengths)
            text = text[:end] + text[position:end] * draw(one_to_five) + text[end:]
        else:
            text = text[:position] + draw(random_texts) + text[position:]
    return text


def outcome_of(folder: Path, content: str | bytes) -> str:
    """Load the folder (and the file as a --config), within the bounds; the outcome's name."""
    path = folder / "resources.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    outcomes = []
    tracemalloc.start()
    started = time.monotonic()
    try:
        for load in (lambda: load_resources([folder], app_id="app"), lambda: load_configuration(path)):
            try:
                load()
                outcomes.append("read")
            except ResourceError as exc:  # which must name the file
                outcomes.append("ResourceError" if str(exc).startswith(f"{path}: ") else f"unnamed: {exc}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not [outcome for outcome in outcomes if outcome.startswith("unnamed")], outcomes
    elapsed = time.monotonic() - started
    assert elapsed < SECONDS, f"{elapsed:.1f} s for {len(content)} bytes"
    assert peak < BYTES, f"{peak} bytes traced for {len(content)} bytes"
    return "resources " + outcomes[0] + ", as --config " + outcomes[1]


def run(
    folder: Path,
    examples: int,
    strategy: st.SearchStrategy[Any],
    to_content: Callable[[Any], str | bytes],
    report: Callable[[str], None],
) -> None:
    """Try `examples` inputs; report how many, and how each ended."""
    counts: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=examples,
        deadline=None,  # the time bound is asserted for each input, without hypothesis' reruns
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def check(drawn: Any) -> None:
        counts[outcome_of(folder, to_content(drawn))] += 1

    import celpy

    celpy.Environment()  # sets the recursion limit to 2500 for good: before hypothesis notes it
    check()
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
    report(f"{sum(counts.values())} inputs, every one read or a ResourceError: {outcomes}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed")


def test_mutated_documents(folder: Path, fault_report: Callable[[str], None]) -> None:
    drawn = st.tuples(mutated_tree(), st.booleans(), st.booleans())
    run(folder, 300, drawn, lambda tree: dump(*tree), fault_report)


def test_mutated_text(folder: Path, fault_report: Callable[[str], None]) -> None:
    run(folder, 300, mutated_text(), lambda text: text, fault_report)


def test_random_yaml_and_bytes(folder: Path, fault_report: Callable[[str], None]) -> None:
    documents = st.lists(values, min_size=1, max_size=3).map(lambda docs: dump(docs, False, True))
    run(folder, 200, documents | st.binary(max_size=200), lambda content: content, fault_report)
