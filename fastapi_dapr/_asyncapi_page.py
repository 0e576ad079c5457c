"""The AsyncAPI document as a page: plain HTML made on the server, no script and nothing
fetched from elsewhere (AsyncAPI's own renderer is a JavaScript bundle from a CDN)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

__all__: list[str] = []

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1f2328; line-height: 1.5; }
h1 small { color: #59636e; font-weight: normal; font-size: 60%; }
section { border: 1px solid #d1d9e0; border-radius: 6px; padding: 0 1rem .75rem; margin: 1rem 0; }
.action { font: bold 75% monospace; padding: 2px 6px; border-radius: 4px; color: #fff; }
.receive { background: #1f6feb; } .send { background: #1a7f37; }
code, pre { font-family: ui-monospace, monospace; font-size: 85%; }
pre { background: #f6f8fa; padding: .75rem; overflow-x: auto; border-radius: 6px; }
th { text-align: left; font-weight: 600; padding-right: 1rem; } table { margin-bottom: .5rem; }
"""

_SCHEMA_REF = re.compile(r"&quot;#/components/schemas/([\w.\-]+)&quot;")
_CODE = re.compile(r"`([^`]+)`")


def _text(markdown: str) -> str:
    """CommonMark of the document's descriptions, shown as text with its `code` spans."""
    paragraphs = [html.escape(part.strip()) for part in markdown.split("\n\n") if part.strip()]
    return "".join("<p>" + _CODE.sub(r"<code>\1</code>", part) + "</p>" for part in paragraphs)


def _json(value: Any) -> str:
    """`value` as indented JSON, each reference to a schema a link to it on the page."""
    text = html.escape(json.dumps(value, indent=2, ensure_ascii=False))
    return "<pre>" + _SCHEMA_REF.sub(r'"<a href="#schema-\1">#/components/schemas/\1</a>"', text) + "</pre>"


def _target(document: Mapping[str, Any], ref: str) -> Any:
    """What a local `$ref` (`#/a/b`) points at in `document`."""
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _operation(document: Mapping[str, Any], key: str, operation: Mapping[str, Any]) -> str:
    channel = _target(document, operation["channel"]["$ref"])
    action = operation["action"]
    parts = [
        f'<section id="operation-{html.escape(key)}">',
        f'<h3><span class="action {action}">{action.upper()}</span> '
        f"<code>{html.escape(str(channel.get('address')))}</code> on "
        f"<code>{html.escape(str(channel.get('x-dapr-pubsub', '')))}</code></h3>",
        f"<p><strong>{html.escape(operation.get('title', key))}</strong>",
        f": {html.escape(operation['summary'])}</p>" if "summary" in operation else "</p>",
        _text(operation.get("description", "")),
    ]
    extensions = {name: value for name, value in operation.items() if name.startswith("x-")}
    if extensions:
        rows = "".join(
            f"<tr><th>{html.escape(name)}</th><td><code>{html.escape(str(value))}</code></td></tr>"
            for name, value in extensions.items()
        )
        parts.append(f"<table>{rows}</table>")
    for ref in operation.get("messages", []):
        message = _target(document, ref["$ref"])
        if "$ref" in message:
            message = _target(document, message["$ref"])
        parts.append(
            f"<details><summary>Message <code>{html.escape(str(message.get('name')))}</code> "
            f"({html.escape(str(message.get('contentType', '')))})</summary>"
            f"{_text(message.get('description', ''))}{_json(message.get('payload', {}))}</details>"
        )
    parts.append("</section>")
    return "".join(parts)


def render_page(document: Mapping[str, Any], json_url: str | None) -> str:
    """The HTML page of an AsyncAPI document of `Dapr.asyncapi()`."""
    info = document["info"]
    title = html.escape(str(info["title"]))
    body = [f"<h1>{title} <small>{html.escape(str(info['version']))}</small></h1>"]
    body.append(_text(info.get("description", "")))
    if json_url is not None:
        link = html.escape(json_url)
        body.append(f'<p>The AsyncAPI {document["asyncapi"]} document: <a href="{link}">{link}</a></p>')
    operations = document.get("operations", {})
    for action, heading in (("receive", "What the app receives"), ("send", "What the app sends")):
        chosen = [(key, op) for key, op in operations.items() if op.get("action") == action]
        body.append(f"<h2>{heading}</h2>")
        body.extend(_operation(document, key, op) for key, op in chosen)
        if not chosen:
            body.append("<p>Nothing.</p>")
    body.append("<h2>Schemas</h2>")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        anchor = html.escape(name)
        body.append(
            f'<details id="schema-{anchor}"><summary><code>{anchor}</code></summary>{_json(schema)}</details>'
        )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} - AsyncAPI</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style>'
        f"</head><body>{''.join(body)}</body></html>"
    )
