"""The API reference: docs/api.md has an entry for every public name, and the page mkdocs builds
from it lists every public member of every public class, with formatted signatures and no
internal notes in the text."""

from __future__ import annotations

import ast
import dataclasses
import enum
import html
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import fastapi_dapr
import fastapi_dapr.testing

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.md"

# Members left out of the reference on purpose (docs/api.md's filters say so too).
NOT_API = {"fastapi_dapr.Dapr.backend"}  # the mode's machinery


def public_names() -> dict[str, Any]:
    """Every public name, as its entry in docs/api.md spells it, and the object."""
    names = {f"fastapi_dapr.{name}": getattr(fastapi_dapr, name) for name in fastapi_dapr.__all__}
    testing = fastapi_dapr.testing
    names.update({f"fastapi_dapr.testing.{name}": getattr(testing, name) for name in testing.__all__})
    return names


def entries(markdown: str) -> list[str]:
    """The objects the page documents: its `::: path` lines."""
    return re.findall(r"^::: ([\w.]+)\s*$", markdown, re.MULTILINE)


def test_every_public_name_has_one_entry() -> None:
    documented = entries(API_PAGE.read_text())
    missing = [name for name in public_names() if name not in documented]
    assert missing == [], f"docs/api.md has no `::: name` entry for {missing}"
    repeated = sorted({name for name in documented if documented.count(name) > 1})
    assert repeated == []


def test_every_entry_is_a_public_name() -> None:
    stale = [name for name in entries(API_PAGE.read_text()) if name not in public_names()]
    assert stale == [], f"docs/api.md documents names that are not public: {stale}"


def init_attributes(cls: type) -> set[str]:
    """The public attributes `cls.__init__` sets on `self`, as the source says."""
    init = cls.__dict__.get("__init__")
    if init is None or dataclasses.is_dataclass(cls):  # a dataclass's __init__ has no source
        return set()
    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
            ):
                names.add(target.attr)
    return names


def public_members(cls: type) -> set[str]:
    """What a user of `cls` can reach that `cls` itself defines (not what it inherits)."""
    names = {name for name in vars(cls) if not name.startswith("_")}
    if issubclass(cls, BaseModel):
        names -= {"model_config"}
        names |= set(cls.model_fields)
    if dataclasses.is_dataclass(cls):
        names |= {field.name for field in dataclasses.fields(cls)}
    if issubclass(cls, enum.Enum):
        names |= set(cls.__members__)
    return names | init_attributes(cls)


def test_public_members_are_found() -> None:
    # The helper above, checked on classes whose members are known.
    assert {"status_code", "headers", "json", "text", "content", "is_success"} <= public_members(
        fastapi_dapr.InvokeResponse
    )
    assert {"status_code", "error_code", "message", "details"} <= public_members(fastapi_dapr.DaprAPIError)
    assert {"data", "time", "extensions"} <= public_members(fastapi_dapr.CloudEvent)
    assert {"SUCCESS", "RETRY", "DROP", "response"} <= public_members(fastapi_dapr.Status)
    assert "model_config" not in public_members(fastapi_dapr.CloudEvent)


@pytest.fixture(scope="module")
def built_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """docs/api.md as mkdocs builds it, with the site's configuration (the other pages left
    out: they do not change it, and the build takes a few seconds less)."""
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    site = tmp_path_factory.mktemp("site")
    config = load_config(
        str(ROOT / "mkdocs.yml"),
        site_dir=str(site),
        nav=[{"API": "api.md"}],
        exclude_docs="/*.md\n!/api.md\n/examples/\n/schemas/\n/img/\n",
    )
    build(config)  # strict, as mkdocs.yml says: a warning fails the build
    return (site / "api" / "index.html").read_text()


def page_text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


# mkdocstrings-python formats signatures with ruff (or black) when one is installed: it
# calls ruff, a program of its own.
@pytest.mark.process
def test_every_public_member_is_on_the_page(built_page: str) -> None:
    anchors = set(re.findall(r'id="(fastapi_dapr\.[\w.]+)"', built_page))
    missing = [name for name in public_names() if name not in anchors]
    for name, obj in public_names().items():
        if inspect.isclass(obj) and obj.__module__.startswith("fastapi_dapr"):
            for member in sorted(public_members(obj)):
                path = f"{name}.{member}"
                if path not in anchors and path not in NOT_API:
                    missing.append(path)
    assert missing == [], f"not on the API page: {missing}"
    shown = [path for path in NOT_API if path in anchors]
    assert shown == []


def signature(page: str, path: str) -> str | None:
    """The text of the signature block under the heading of `path`, if it has one."""
    heading = page.index(f'id="{path}"')
    block = re.compile(r'<div class="doc-signature[^>]*>(.*?)</pre>', re.DOTALL).search(page, heading)
    following = page.find("<h", heading + 1)
    if block is None or (following != -1 and block.start() > following):
        return None
    return page_text(block.group(1))


def own_constructor(cls: type) -> bool:
    """Whether the package defines how `cls` is made (not Exception, Enum or APIRouter)."""
    return "__init__" in vars(cls) or dataclasses.is_dataclass(cls) or issubclass(cls, BaseModel)


@pytest.mark.process
def test_constructor_signatures_are_formatted(built_page: str) -> None:
    # One parameter a line, with its annotation and default: ruff formatted the signature.
    dapr = signature(built_page, "fastapi_dapr.Dapr")
    assert dapr is not None
    assert dapr.startswith("Dapr(\n    app: FastAPI,\n    *,\n    app_id: str | None = None,\n"), (
        f"Dapr's signature is not formatted (is ruff installed? the docs extra pulls it):\n{dapr}"
    )
    missing = []
    for path, obj in public_names().items():
        if inspect.isclass(obj) and own_constructor(obj):
            shown = signature(built_page, path)
            name = path.rsplit(".", 1)[1]
            # A pydantic model's fields by their Python names (its runtime signature has the aliases).
            if issubclass(obj, BaseModel):
                parameters = list(obj.model_fields)
            else:
                parameters = list(inspect.signature(obj).parameters)
            if shown is None or not shown.startswith(f"{name}("):
                missing.append(path)
            elif [parameter for parameter in parameters if not re.search(rf"\b{parameter}\b", shown)]:
                missing.append(f"{path} (parameters {parameters})")
    assert missing == [], f"no constructor signature on the API page for {missing}"


@pytest.mark.process
def test_no_internal_notes_on_the_page(built_page: str) -> None:
    # The docstrings' readers are the package's users: no section numbers of the project's
    # notes on daprd, no paths of the repository's files.
    internal = r"\breference \d|daprd-http-contract|\bdocs/[\w-]+\.md|\bissue \d"
    leaks = re.findall(rf".{{0,50}}(?:{internal}).{{0,20}}", page_text(built_page))
    assert leaks == []
