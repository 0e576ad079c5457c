"""docs/testing.md: its examples run (every test function of the example files it includes),
and the timed-out wait it shows is what a timed-out wait says."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import FastAPI

from fastapi_dapr import RETRY, CloudEvent, Dapr, RetryPolicy
from fastapi_dapr.testing import DaprTestClient

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.md"


def example(name: str) -> ModuleType:
    """docs/examples/<name>.py, imported afresh (its module-level state new)."""
    for module_name in [m for m in sys.modules if m.startswith("docs.examples.")]:
        del sys.modules[module_name]
    return importlib.import_module(f"docs.examples.{name}")


def included_examples() -> list[str]:
    names = re.findall(r'--8<-- "docs/examples/([a-z_]+)\.py(?::[a-z]+)?"', PAGE.read_text())
    return sorted(set(names))


def test_the_page_includes_its_examples() -> None:
    assert included_examples() == ["testing_examples", "testing_redis"]


@pytest.mark.parametrize("name", included_examples())
async def test_every_test_of_the_page_s_examples_passes(name: str) -> None:
    tests = [(n, f) for n, f in vars(example(name)).items() if n.startswith("test_") and callable(f)]
    assert tests
    for test_name, test in tests:
        example(name)  # each test on a fresh module, as pytest would import it once per run
        module = sys.modules[f"docs.examples.{name}"]
        test = getattr(module, test_name)
        if inspect.iscoroutinefunction(test):
            await test()
        else:
            test()


def numbers_as_n(text: str) -> str:
    return re.sub(r"[0-9]+(\.[0-9]+)?", "N", text)


def test_the_timed_out_wait_the_page_shows_is_what_one_says() -> None:
    (shown,) = re.findall(r"```text\n(no delivery report.*?)```", PAGE.read_text(), re.S)
    app = FastAPI()
    dapr = Dapr(app, app_id="shop", retry=RetryPolicy(policy="constant", duration=60.0))

    @dapr.subscribe("pubsub", "payments")
    async def on_payment(event: CloudEvent[dict[str, float]]):  # type: ignore[no-untyped-def]
        return RETRY

    with DaprTestClient(app) as client, pytest.raises(AssertionError) as info:
        client.publish_and_wait("pubsub", "payments", {"amount": 1.0}, timeout=0.2)
    assert numbers_as_n(str(info.value)) == numbers_as_n(shown.rstrip("\n"))
