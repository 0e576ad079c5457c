"""scripts/screenshots: the documentation site in headless Chromium, photographed and checked.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages ended by a NUL byte, commands on the browser's fd 3, answers on its fd 4), so
nothing but the standard library and the browser is needed, and no debugging port is
opened. The site is served by a thread of this process on a free loopback port; the
browser resolves no other host, so the theme's web fonts fail at once instead of
waiting on the network (the system's Roboto stands in).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAIN_PAGES = (
    "",
    "getting-started/",
    "subscriptions/",
    "invocation/",
    "api/",
    "standalone/",
    "configuration/",
    "errors/",
)
WIDTH = 1280
HEIGHT = 900

# No transitions: the header's title fades from the site's name to the page's as the page
# scrolls, and a screenshot would catch it half-way.
STILL = """
const style = document.createElement("style");
style.textContent = "*, *::before, *::after { transition: none !important; animation: none !important; }";
document.head.appendChild(style);
"""

# What a reader would call broken at this width, found in the laid-out page. Returns a list
# of {where, what}: `where` is the heading above the element.
LAYOUT_CHECK = r"""
(() => {
  const problems = [];
  const headings = Array.from(document.querySelectorAll(".md-content h1, .md-content h2, "
    + ".md-content h3, .md-content h4, .md-content h5"));
  const where = (el) => {
    let found = "top of the page";
    for (const h of headings) {
      if (h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) {
        found = (h.id ? "#" + h.id : h.textContent.trim().slice(0, 60));
      }
    }
    return found;
  };
  const add = (el, what) => problems.push({where: where(el), what});
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1) {
    add(document.body, `the page is ${root.scrollWidth}px wide in a ${root.clientWidth}px window`);
  }
  const column = document.querySelector(".md-content__inner");
  if (!column) return problems;
  const right = column.getBoundingClientRect().right;
  // An element in a tab not selected or a closed <details> is measured as a reader who opens
  // it sees it: its tab selected (and its <details> opened) for the time of the measure.
  // Returns what to add to the problem's text, and undoes it when called again.
  const reveal = (el) => {
    const undo = [];
    const names = [];
    for (let node = el.parentElement; node && node !== column; node = node.parentElement) {
      if (node.tagName === "DETAILS" && !node.open) {
        node.open = true;
        undo.push(() => { node.open = false; });
      }
      const set = node.parentElement && node.parentElement.parentElement;
      if (node.parentElement && node.parentElement.classList.contains("tabbed-content")
          && set && set.classList.contains("tabbed-set")) {
        const index = Array.from(node.parentElement.children).indexOf(node);
        const inputs = Array.from(set.children).filter((child) => child.tagName === "INPUT");
        const labels = set.querySelectorAll(":scope > .tabbed-labels > label");
        if (inputs[index] && !inputs[index].checked) {
          const was = inputs.find((input) => input.checked);
          inputs[index].checked = true;
          undo.push(() => { if (was) was.checked = true; });
          names.push(labels[index] ? labels[index].textContent.trim() : `tab ${index + 1}`);
        }
      }
    }
    const note = names.length ? ` (in the tab ${names.map((n) => JSON.stringify(n)).join(" > ")})` : "";
    return [note, () => undo.reverse().forEach((step) => step())];
  };
  for (const pre of column.querySelectorAll("pre")) {
    const [note, hide] = reveal(pre);
    const code = pre.querySelector("code") || pre;
    const lines = code.textContent.split("\n");
    const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
    if (code.scrollWidth > code.clientWidth + 1) {
      add(pre, `a code block scrolls sideways${note} (${code.scrollWidth}px of text in ${code.clientWidth}px;`
        + ` longest line ${longest.length} characters: ${JSON.stringify(longest.trim().slice(0, 70))})`);
    }
    if (pre.getBoundingClientRect().right > right + 1) {
      add(pre, `a code block sticks out of the text column${note}`);
    }
    hide();
  }
  for (const table of column.querySelectorAll("table")) {
    // The theme wraps a table in a box that scrolls sideways, wider than the column by its
    // margins: the table is too wide when that box scrolls.
    const [note, hide] = reveal(table);
    const box = table.closest(".md-typeset__scrollwrap");
    const [wide, room] = box
      ? [box.scrollWidth, box.clientWidth]
      : [table.getBoundingClientRect().right - column.getBoundingClientRect().left, column.clientWidth];
    if (wide > room + 1) {
      const head = table.querySelector("th, td");
      add(table, `a table is wider than the text column${note} (${Math.round(wide)}px in ${room}px;`
        + ` first column ${JSON.stringify(head ? head.textContent.trim().slice(0, 40) : "")})`);
    }
    hide();
  }
  for (const img of column.querySelectorAll("img")) {
    if (!img.complete || img.naturalWidth === 0) {
      add(img, `an image did not load: ${img.getAttribute("src")}`);
    } else if (img.getBoundingClientRect().right > right + 1) {
      add(img, `an image sticks out of the text column: ${img.getAttribute("src")}`);
    }
  }
  // A name in code (no spaces: `--app-protocol`, `ERR_PUBSUB_NOT_FOUND`) broken over two lines,
  // in a table cell or a sentence; code with spaces may wrap at them, and a long name in a table
  // too wide for the column after underscores (docs/javascripts/nobreak.js).
  for (const code of column.querySelectorAll("code:not(.md-code-long-name)")) {
    if (code.closest("pre") || /\s/.test(code.textContent)) continue;
    const [note, hide] = reveal(code);
    if (code.getClientRects().length > 1) {
      const where = code.closest("td, th") ? "a table cell" : "the text";
      add(code, `${JSON.stringify(code.textContent)} is broken over lines in ${where}${note}`);
    }
    hide();
  }
  return problems;
})()
"""


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium, spoken to over the DevTools pipe."""

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        flags = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-sandbox",  # as root, as in CI: Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--force-color-profile=srgb",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ]
        # The shell puts the pipe's ends on fds 3 and 4, where Chromium looks for them (a
        # preexec_fn would do it too, but not safely beside the server's thread).
        renumber = f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}'
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["sh", "-c", renumber, executable, *flags],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(to_browser_read, from_browser_write),
                start_new_session=True,  # its own process group: its helpers are stopped with it
            )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._log = log
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._next_id = 0

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data) :]
        while True:
            answer = self._read(timeout, f"the answer to {method}")
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self._events.append(answer)

    def wait_for(self, event: str, *, session: str, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            for index, seen in enumerate(self._events):
                if seen["method"] == event and seen.get("sessionId") == session:
                    del self._events[: index + 1]
                    params: dict[str, Any] = seen.get("params", {})
                    return params
            self._events.append(self._read(timeout, event))

    def _read(self, timeout: float, waiting_for: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"no {waiting_for} from Chromium in {timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                tail = self._log.read_text(errors="replace")[-2000:]
                raise BrowserError(f"Chromium exited while waiting for {waiting_for}:\n{tail}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)  # its own group (start_new_session): this browser only
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)


class Page:
    """A tab `width` px wide (1280: a laptop's)."""

    def __init__(self, browser: Chromium, width: int = WIDTH) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session: str = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def open(self, url: str) -> None:
        navigated = self.send("Page.navigate", {"url": url})
        if navigated.get("errorText"):
            raise BrowserError(f"{url}: {navigated['errorText']}")
        self.browser.wait_for("Page.loadEventFired", session=self.session)
        self.evaluate(STILL)
        self.evaluate("document.fonts.ready.then(() => true)")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenfuls(self) -> Iterator[bytes]:
        """The page top to bottom, a screenful at a time, as a reader scrolls it."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        header = int(self.evaluate("document.querySelector('.md-header')?.offsetHeight ?? 0"))
        step = HEIGHT - header - 40  # what the fixed header hid comes again below it
        top = 0
        while True:
            self.evaluate(f"window.scrollTo(0, {top}); new Promise(r => requestAnimationFrame(() => r(1)))")
            shot = self.send("Page.captureScreenshot", {"format": "png"})
            yield base64.b64decode(shot["data"])
            if top + HEIGHT >= height:
                return
            top += step


@contextlib.contextmanager
def served(site: Path) -> Iterator[str]:
    """`site` over HTTP on a free loopback port, for as long as the block runs."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def build_site(site: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def find_chromium(given: str | None) -> str:
    for name in (given, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    sys.exit("scripts/screenshots: no chromium found (apt-get install chromium, or --chromium PATH)")


def page_name(path: str) -> str:
    return path.strip("/").replace("/", "-") or "index"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help='site paths (api, errors, "" for the home page)')
    parser.add_argument("--all", action="store_true", help="every page of the site")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "screenshots", help="%(default)s")
    parser.add_argument("--site", type=Path, help="a site already built (default: build one)")
    parser.add_argument("--chromium", help="the browser (default: $CHROMIUM, else chromium on PATH)")
    parser.add_argument("--check-only", action="store_true", help="the layout checks, no images")
    parser.add_argument("--width", type=int, default=WIDTH, help="the window's width (%(default)s px)")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)

    with tempfile.TemporaryDirectory(prefix="fastapi-dapr-screens-") as scratch:
        site = args.site
        if site is None:
            site = Path(scratch) / "site"
            build_site(site)
        if args.all:
            pages = sorted(
                str(index.parent.relative_to(site)).replace(".", "") + "/"
                for index in site.rglob("index.html")
                if "404" not in index.parts and index.parent.name != "assets"
            )
            pages = [page.lstrip("/") for page in pages]
        else:
            pages = [page.strip("/") and page.strip("/") + "/" for page in args.pages] or list(MAIN_PAGES)
        out: Path = args.out
        if not args.check_only:
            out.mkdir(parents=True, exist_ok=True)
            for old in out.glob("*.png"):
                old.unlink()
        report: list[str] = []
        browser = Chromium(chromium, Path(scratch) / "profile", Path(scratch) / "chromium.log")
        try:
            with served(site) as base:
                page = Page(browser, args.width)
                for path in pages:
                    page.open(base + path)
                    for problem in page.evaluate(LAYOUT_CHECK):
                        report.append(f"{path or '/'} {problem['where']}: {problem['what']}")
                    if not args.check_only:
                        for number, png in enumerate(page.screenfuls(), 1):
                            (out / f"{page_name(path)}-{number:02}.png").write_bytes(png)
        finally:
            browser.close()

    summary = f"{len(pages)} pages at {args.width} px: " + (
        f"{len(report)} problems" if report else "no problems"
    )
    text = "\n".join([*report, summary]) + "\n"
    print(text, end="")
    if not args.check_only:
        (out / "report.txt").write_text(text)
        print(f"screenshots in {out}")
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
