"""The public API is listed once, in `fastapi_dapr.__all__`."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import fastapi_dapr


def private_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.iter_modules(fastapi_dapr.__path__, "fastapi_dapr.")
        if info.name.rsplit(".", 1)[1].startswith("_")
    ]


def test_all_is_exactly_what_private_modules_export() -> None:
    exported = set()
    for name in private_modules():
        exported |= set(importlib.import_module(name).__all__)
    assert exported == set(fastapi_dapr.__all__)


def test_every_listed_name_exists_and_nothing_else_is_public() -> None:
    for name in fastapi_dapr.__all__:
        assert hasattr(fastapi_dapr, name), name
    public = {
        name
        for name, value in vars(fastapi_dapr).items()
        if not name.startswith("_") and not isinstance(value, type(sys))
    }
    assert public == set(fastapi_dapr.__all__)


def test_public_objects_say_they_come_from_the_package() -> None:
    for name in fastapi_dapr.__all__:
        obj = getattr(fastapi_dapr, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("fastapi_dapr."), name


@pytest.mark.process
def test_importing_the_package_does_not_load_cel() -> None:
    # Apps without routing rules do not pay for the CEL implementation.
    code = "import sys, fastapi_dapr; print('celpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.process
def test_the_package_needs_only_its_declared_dependencies() -> None:
    """The test extras install more (aiohttp, yarl, redis...): the package must not use them
    unless they are its dependencies, or an extra's for a module of that extra."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "for name in ('aiohttp', 'yarl', 'multidict', 'redis', 'faststream', 'dapr'):\n"
        "    sys.modules[name] = None\n"
        "import fastapi_dapr, fastapi_dapr.sidecar.proxy, fastapi_dapr.sidecar.http1\n"
        "import fastapi_dapr.sidecar.pool\n"
        "import fastapi_dapr.sidecar.calls, fastapi_dapr.sidecar.embedded, fastapi_dapr._remote\n"
        "import fastapi_dapr.sidecar.api, fastapi_dapr.sidecar.runtime, fastapi_dapr.testing\n"
        "import fastapi_dapr.brokers.memory, fastapi_dapr.secretstores.local\n"
        "import fastapi_dapr.sidecar.standalone, fastapi_dapr.sidecar.cli, fastapi_dapr.__main__\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
