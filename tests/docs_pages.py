"""What the docs' pages show, read back for the tests: their sections, the files they include,
the shell commands they give, with the output they say each command prints, and a runner for
the curl commands, by curl itself or by an httpx request that means the same."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import socket
import textwrap
from collections.abc import Mapping
from pathlib import Path

import httpx

from .processes import communicate

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@dataclasses.dataclass(frozen=True)
class Command:
    """A command of a page's shell block, its `\\` continuations joined, and the output the
    page shows after it (its `# ` lines; None when it shows none)."""

    text: str
    shown: str | None = None


def section(page: str, heading: str) -> str:
    """The text of `## {heading}...` in docs/{page}, up to the next `## `."""
    text = (DOCS / page).read_text()
    match = re.search(rf"^## {re.escape(heading)}.*?(?=^## |\Z)", text, re.S | re.M)
    assert match is not None, f"{page} has no section {heading!r}"
    return match.group(0)


def sections(page: str, prefix: str) -> dict[str, str]:
    """Every `## {prefix}...` section of a page, by its heading."""
    text = (DOCS / page).read_text()
    found = re.findall(rf"^(## {re.escape(prefix)}[^\n]*)\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return {heading[3:]: body for heading, body in found}


def includes(text: str) -> list[str]:
    """The files a text includes with `--8<--`, in order."""
    return re.findall(r'--8<-- "([^":]+)(?::[^"]*)?"', text)


def code_blocks(text: str, language: str) -> list[tuple[str, str]]:
    """The fenced blocks of `language`, indented ones (in an admonition, a tab) too: (the fence's
    attributes, the block's text, dedented)."""
    found = re.findall(rf"^( *)```{language}([^\n]*)\n(.*?)^\1```", text, re.S | re.M)
    return [(fence, textwrap.dedent(block)) for _, fence, block in found]


def commands(text: str) -> list[Command]:
    """Every command of the `bash` blocks of `text`. A `for` loop, up to its `done`, is one."""
    found: list[Command] = []
    for _, block in code_blocks(text, "bash"):
        lines = block.replace("\\\n", " ").splitlines()
        loop: list[str] = []
        for line in lines:
            if loop:
                loop.append(line)
                if line.strip() == "done":
                    found.append(Command("\n".join(loop)))
                    loop = []
            elif line.startswith("for "):
                loop = [line]
            elif line.startswith("# ") and found:
                shown = found[-1].shown
                output = line[2:] if shown is None else f"{shown}\n{line[2:]}"
                found[-1] = dataclasses.replace(found[-1], shown=output)
            elif line.strip():
                found.append(Command(" ".join(line.split("  #", 1)[0].split())))
    return found


@dataclasses.dataclass(frozen=True)
class Curl:
    """A curl command line as the pages write them: -X, -H, -d and -w."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    data: str | None = None
    write_out: str | None = None

    @classmethod
    def parse(cls, command: str) -> Curl:
        argv = shlex.split(command)
        assert argv[0] == "curl", command
        options: dict[str, object] = {"headers": ()}
        words = iter(argv[1:])
        for word in words:
            if word == "-X":
                options["method"] = next(words)
            elif word == "-H":
                name, _, value = next(words).partition(":")
                options["headers"] = (*options["headers"], (name, value.strip()))  # type: ignore[misc]
            elif word == "-d":
                options["data"] = next(words)
                options.setdefault("method", "POST")
            elif word == "-w":
                options["write_out"] = next(words)
            else:
                assert not word.startswith("-"), f"a curl option the runner does not know: {word}"
                options["url"] = word
        return cls(**options)  # type: ignore[arg-type]


def moved(text: str, urls: Mapping[str, str]) -> str:
    """`text` with each of the page's base URLs replaced by the one the test serves."""
    for shown, served in urls.items():
        text = text.replace(shown, served)
    return text


async def run_curl(command: str, urls: Mapping[str, str]) -> str:
    """The command run by curl itself (a `process` test), and what it printed."""
    argv = shlex.split(moved(command, urls))
    process = await asyncio.create_subprocess_exec(
        *argv, "--silent", "--show-error", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await communicate(process, 60)
    assert process.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


async def run_httpx(command: str, urls: Mapping[str, str]) -> str:
    """What curl would print for the command, from the same request made by httpx."""
    curl = Curl.parse(moved(command, urls))
    async with httpx.AsyncClient() as client:
        answer = await client.request(curl.method, curl.url, headers=list(curl.headers), content=curl.data)
    printed = answer.text
    if curl.write_out is not None:
        printed += curl.write_out.replace("%{http_code}", str(answer.status_code)).replace("\\n", "\n")
    return printed


def free_port() -> int:
    """A loopback port nobody listens on, for a server the test starts in another process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def assert_prints(command: Command, printed: str) -> None:
    """What the command printed is what the page shows (as JSON when it is JSON), or nothing."""
    if command.shown is None:
        assert printed == "", f"{command.text} printed {printed!r}, the page shows nothing"
        return
    try:
        expected, got = json.loads(command.shown), json.loads(printed)
    except ValueError:
        expected, got = command.shown.strip(), printed.strip()
    assert got == expected, command.text
