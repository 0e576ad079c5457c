"""The sidecar API fed random requests through its ASGI interface (hypothesis).

Random methods, paths and percent-encodings, headers (Host and Origin included), metadata
query parameters, content types, JSON of any depth, CloudEvents and bulk bodies, sent as a
server would hand them to the app (raw bytes, a loopback or a remote client). Whatever comes:

- no 5xx, unless a component really failed (none can here: the in-memory broker and the
  app's own routes);
- no traceback in the logs;
- every error the sidecar writes is in daprd's format (`errorCode` and `message`), or one
  of daprd's two plain-text answers;
- every message accepted is settled: each one the broker took ends in a delivery report
  (delivered, dead-lettered, dropped, expired, unmatched), none is left hanging.

The budget is bounded (about 3,000 requests, well under two minutes) and derandomized,
so that CI runs the same inputs each time; `--hypothesis-seed` explores others locally.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapi_dapr import DROP, BulkEntry, CloudEvent, Dapr
from fastapi_dapr.sidecar.delivery import DeliveryReport
from fastapi_dapr.testing import DaprTestClient

pytestmark = pytest.mark.fuzz  # thousands of generated inputs: the full suite runs them, the fast loop not

FUZZ = settings(
    max_examples=1000,
    deadline=None,  # the whole budget is bounded instead; one slow example is not a failure
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

PUBSUBS = ["pubsub", "nope", "", "pub%2Fsub", "PubSub"]
TOPICS = ["orders", "raw", "ruled", "bulk", "dead", "unheard", "a/b", "", "%2e%2e", "orders%00"]
PREFIXES = [
    "/v1.0/publish/",
    "/v1.0/publish/bulk/",
    "/v1.0-alpha1/publish/bulk/",
    "/v1.0/invoke/",
    "/v1.0/secrets/",
    "/v1.0/metadata",
    "/v1.0/metadata/",
    "/v1.0/healthz",
    "/v1.0/healthz/outbound",
    "/v1.0/state/",
    "/v1.0/bindings/",
    "/v1.0/actors/",
    "/v1.0-alpha1/",
    "/v1.0/shutdown",
    "/dapr/subscribe",
    "/dapr/config",
    "/events/pubsub/",
    "/metrics",
    "/",
    "//",
]
METADATA_KEYS = [
    "rawPayload",
    "ttlInSeconds",
    "cloudevent.id",
    "cloudevent.type",
    "cloudevent.source",
    "cloudevent.traceparent",
    "cloudevent.datacontenttype",
    "maxBulkPubBytes",
    "partitionKey",
    "content-type",
    "x:y",
    "",
]
CONTENT_TYPES = [
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "text/plain",
    "application/octet-stream",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "Application/CloudEvents+JSON ; x=y",
    "application/xml",
    "multipart/form-data; boundary=x",
    ";",
    "/",
    "",
]
# What a browser or a client may put in Host and Origin, valid or not.
HOSTS = [
    "127.0.0.1:3500",
    "localhost",
    "[::1]:8000",
    "[",
    "]",
    "[::1",
    "::1",
    "example.com",
    "127.0.0.1:x",
    ":",
]
ORIGINS = ["http://localhost:8000", "http://evil.example", "null", "[", "http://[", "http://[::1", "//", "x:"]

# Header values a server hands over: latin-1 text without CR, LF or NUL.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
path_text = st.text(alphabet=string.ascii_letters + string.digits + "%/._-~:@!$&'()*+,;=[]", max_size=30)


def deep_json(depth: int, kind: str) -> bytes:
    """Valid JSON nested `depth` levels deep, written out (json.dumps stops near 1,000)."""
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
any_json = st.one_of(
    json_values,
    st.builds(
        lambda depth, kind: json.loads(deep_json(depth, kind)),
        st.integers(min_value=10, max_value=400),
        st.sampled_from(["list", "dict"]),
    ),
)
cloud_events = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=10), st.integers()),
        "specversion": st.sampled_from(["1.0", "0.3", 1, ""]),
        "type": st.one_of(st.sampled_from(["x", "com.dapr.event.sent"]), json_values),
        "source": st.text(max_size=10),
        "datacontenttype": st.sampled_from(CONTENT_TYPES),
        "data": any_json,
        "data_base64": st.one_of(st.text(max_size=12), st.just("aGVsbG8=")),
        "traceparent": header_text,
        "expiration": st.sampled_from(["2000-01-01T00:00:00Z", "x", "2999-01-01T00:00:00Z"]),
    },
)
bulk_entries = st.fixed_dictionaries(
    {},
    optional={
        "entryId": st.one_of(st.text(max_size=6), st.integers()),
        "event": st.one_of(any_json, cloud_events),
        "contentType": st.sampled_from(CONTENT_TYPES),
        "metadata": st.one_of(
            st.dictionaries(st.sampled_from(METADATA_KEYS), header_text, max_size=3), json_values
        ),
    },
)
good_entries = st.fixed_dictionaries(
    {
        "entryId": st.text(string.ascii_letters, min_size=1, max_size=4),
        "event": json_values,
        "contentType": st.just("application/json"),
    },
    optional={"metadata": st.dictionaries(st.sampled_from(METADATA_KEYS), header_text, max_size=2)},
)
entry_lists = st.lists(
    st.one_of(good_entries, good_entries, bulk_entries),
    max_size=6,
    unique_by=lambda entry: str(entry.get("entryId")),
)
bulk_bodies = st.one_of(
    entry_lists,
    entry_lists,
    st.fixed_dictionaries({"entries": st.lists(bulk_entries, max_size=6)}),
    json_values,
)


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


# The strategies the composite ones below draw from are built once, here: building them
# anew on each draw took most of this module's time (validating them, not using them).
body_shapes = st.sampled_from(["bytes", "json", "cloudevent", "bulk", "deep", "deep-event", "unbalanced"])
small_bytes = st.binary(max_size=64)
deep_depths = st.integers(min_value=50, max_value=20000)
deep_kinds = st.sampled_from(["list", "dict"])
unbalanced_openings = st.sampled_from([b"[", b"{", b'{"a":'])
bulk_shapes = st.integers(0, 3)
bulk_content_types = st.sampled_from([b"application/json", b"application/cloudevents+json", b"text/plain"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A body of one of five shapes, drawn first so that each is tried as often as the others."""
    shape = draw(body_shapes)
    if shape == "bytes":
        return draw(small_bytes)
    if shape == "json":
        return encode(draw(json_values))
    if shape == "cloudevent":
        return encode(draw(cloud_events))
    if shape == "bulk":
        return encode(draw(bulk_bodies))
    depth = draw(deep_depths)
    deep = deep_json(depth, draw(deep_kinds))
    if shape == "deep":
        return deep
    if shape == "deep-event":
        return b'{"specversion":"1.0","id":"1","source":"s","type":"x","data":' + deep + b"}"
    return draw(unbalanced_openings) * depth


@st.composite
def bulk_requests(draw: st.DrawFn) -> bytes:
    """A bulk publish body: entries of any shape, or one entry whose event is nested deep."""
    if draw(bulk_shapes):
        return encode(draw(bulk_bodies))
    deep = deep_json(draw(deep_depths), draw(deep_kinds))
    content_type = draw(bulk_content_types)
    return b'{"entries":[{"entryId":"1","contentType":"' + content_type + b'","event":' + deep + b"}]}"


@dataclass
class Call:
    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int]


prefixes = st.sampled_from(PREFIXES)
pubsub_names = st.sampled_from(PUBSUBS) | path_text
topic_names = st.sampled_from(TOPICS) | path_text
part_counts = st.integers(0, 2)
methods = st.sampled_from(["POST", "PUT", "GET", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"])
query_params = st.lists(
    st.tuples(
        st.sampled_from(METADATA_KEYS).map(lambda k: "metadata." + k) | path_text,
        st.sampled_from(["true", "false", "0", "-1", "10", "1ns", "0s", "%zz", "\u0661\u0660"]) | header_text,
    ),
    max_size=4,
)
one_in_four = st.integers(0, 3)
content_type_values = st.sampled_from(CONTENT_TYPES) | header_text
host_values = st.sampled_from(HOSTS) | header_text
origin_values = st.sampled_from(ORIGINS) | header_text
other_header_names = st.lists(
    st.sampled_from(
        [
            "sec-fetch-site",
            "traceparent",
            "tracestate",
            "dapr-app-id",
            "x-forwarded-for",
            "forwarded",
            "dapr-api-token",
            "accept",
            "x-custom",
        ]
    ),
    max_size=3,
)
any_body = bodies()
clients = st.sampled_from([("127.0.0.1", 50000), ("::1", 50000), ("10.1.2.3", 50000)])


@st.composite
def calls(draw: st.DrawFn) -> Call:
    prefix = draw(prefixes)
    parts = [draw(pubsub_names), draw(topic_names)]
    path = prefix + "/".join(parts[: draw(part_counts)])
    if draw(st.booleans()):
        path = quote(path, safe="/%") if draw(st.booleans()) else path.replace("/", "%2F", 1)
    method = draw(methods)
    params = draw(query_params)
    query = "&".join(f"{quote(k, safe='.%')}={quote(v, safe='%')}" for k, v in params)
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):
        headers.append(("content-type", draw(content_type_values)))
    if draw(one_in_four) == 0:
        headers.append(("host", draw(host_values)))
    else:
        headers.append(("host", "127.0.0.1:3500"))
    if draw(one_in_four) == 0:
        headers.append(("origin", draw(origin_values)))
    for name in draw(other_header_names):
        headers.append((name, draw(header_text)))
    body = draw(any_body) if method in ("POST", "PUT", "PATCH") else b""
    headers.append(("content-length", str(len(body))))
    client = draw(clients)
    return Call(
        method,
        path.encode("latin-1", "replace"),
        query.encode("latin-1", "replace"),
        [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        body,
        client,
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Tally:
    """What the module saw, reported at its end."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    daprds_5xx: Counter[str] = field(default_factory=Counter)  # daprd's own, by errorCode
    accepted: Counter[str] = field(default_factory=Counter)  # messages the broker took, by topic
    tracebacks: list[logging.LogRecord] = field(default_factory=list)


TALLY = Tally()
SUBSCRIBED = {"orders", "raw", "ruled", "bulk", "dead"}


class TracebackCatcher(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            TALLY.tracebacks.append(record)


def build_app() -> FastAPI:
    app = FastAPI()
    dapr = Dapr(app, app_id="fuzz", api_token="")

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def orders(event: CloudEvent[Any]) -> Any:
        return DROP if str(event.id).endswith(("0", "5")) else None

    @dapr.subscribe("pubsub", "dead")
    async def dead(event: CloudEvent[Any]) -> None:
        pass

    @dapr.subscribe("pubsub", "raw", raw_payload=True)
    async def raw(event: CloudEvent[bytes]) -> None:
        pass

    @dapr.subscribe("pubsub", "ruled", match='event.type == "x"')
    async def ruled(event: CloudEvent[Any]) -> None:
        pass

    @dapr.subscribe("pubsub", "bulk", bulk=True)
    async def bulk(entries: list[BulkEntry[Any]]) -> None:
        pass

    return app


class Settled:
    """Counts the final delivery reports, and wakes a waiter once enough have come."""

    def __init__(self) -> None:
        self.reports: Counter[str] = Counter()
        self.changed = asyncio.Event()

    def __call__(self, report: DeliveryReport) -> None:
        self.reports[report.topic] += 1
        self.changed.set()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[DaprTestClient, Settled]]:
    catcher = TracebackCatcher()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error"), logging.getLogger("fastapi_dapr")]
    for logger in loggers:
        logger.addHandler(catcher)
    app = build_app()
    settled = Settled()
    with DaprTestClient(app) as client:
        client.portal.call(lambda: _observe(app, settled))
        yield client, settled
        # Every message the broker took ends in a report: wait for them, then compare.
        expected = Counter({topic: n for topic, n in TALLY.accepted.items() if topic in SUBSCRIBED})
        client.portal.call(_settle, settled, expected)
    for logger in loggers:
        logger.removeHandler(catcher)
    statuses = dict(sorted(TALLY.statuses.items()))
    print(
        f"\nfuzzed the sidecar API with {TALLY.requests} requests: statuses {statuses}, "
        f"{sum(TALLY.daprds_5xx.values())} 5xx, each daprd's own answer ({dict(TALLY.daprds_5xx)}), "
        f"{len(TALLY.tracebacks)} tracebacks; "
        f"messages accepted {dict(TALLY.accepted)}, settled {dict(settled.reports)}"
    )
    assert not TALLY.tracebacks, [r.getMessage() for r in TALLY.tracebacks[:5]]


async def _observe(app: FastAPI, settled: Settled) -> None:
    app.state.fastapi_dapr.backend.running().add_observer(settled)


async def _settle(settled: Settled, expected: Counter[str]) -> None:
    async def all_in() -> None:
        # A dead-lettered message is republished to "dead": it is reported twice, once per topic.
        while any(settled.reports[topic] < n for topic, n in expected.items()):
            settled.changed.clear()
            await settled.changed.wait()

    try:
        await asyncio.wait_for(all_in(), 30)
    except asyncio.TimeoutError:
        raise AssertionError(f"accepted {dict(expected)}, settled only {dict(settled.reports)}") from None
    # Once each: only the dead-letter topic gets more than was published to it.
    for topic, n in expected.items():
        if topic != "dead":
            assert settled.reports[topic] == n, (topic, dict(expected), dict(settled.reports))


async def _send(app: Any, call: Call) -> Answer:
    path = unquote(call.raw_path.decode("latin-1"), errors="surrogateescape")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": call.method,
        "scheme": "http",
        "path": path,
        "raw_path": call.raw_path,
        "root_path": "",
        "query_string": call.query,
        "headers": call.headers,
        "client": call.client,
        "server": ("127.0.0.1", 3500),
        "state": {},
    }
    sent = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": call.body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    status = 0
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update({k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])})
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    return Answer(status, headers, b"".join(chunks))


# The 5xx daprd itself answers, by design, when nothing failed: a building block with no
# component, a secret store or an app id that is not there, a shutdown that cannot be done.
DAPRDS_5XX_CODES = {
    "ERR_STATE_STORE_NOT_CONFIGURED",
    "ERR_INVOKE_OUTPUT_BINDING",
    "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
    "ERR_LOCK_STORE_NOT_CONFIGURED",
    "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED",
    "ERR_API_UNIMPLEMENTED",
    "ERR_SECRET_STORES_NOT_CONFIGURED",
    "DAPR_SCHEDULER_SCHEDULE_JOB",
    "DAPR_SCHEDULER_GET_JOB",
    "DAPR_SCHEDULER_DELETE_JOB",
}


def daprds_own_5xx(answer: Answer) -> bool:
    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    code = body.get("errorCode") if isinstance(body, dict) else None
    if code in DAPRDS_5XX_CODES:
        return True
    if code == "ERR_DIRECT_INVOKE":  # an app id no one serves: daprd's 500 as well
        return "failed to invoke" in body["message"] or "couldn't find" in body["message"]
    if code == "ERR_PUBSUB_PUBLISH_MESSAGE" and "failedEntries" in body:
        # A bulk entry whose metadata the broker refuses (a TTL) fails alone, as in daprd.
        return all(
            entry.get("error", "").startswith("failed deserializing metadata")
            for entry in body["failedEntries"]
        )
    return False


def check(call: Call, answer: Answer) -> None:
    TALLY.requests += 1
    TALLY.statuses[answer.status] += 1
    path = unquote(call.raw_path.decode("latin-1"))
    assert answer.status != 0, "no answer"
    if answer.status >= 500:
        assert daprds_own_5xx(answer), (call, answer)
        TALLY.daprds_5xx[json.loads(answer.body)["errorCode"]] += 1
    if answer.status >= 400 and not path.startswith("/v1.0/invoke/") and answer.body:
        # The sidecar's own refusals (an invocation answers with the app's own errors).
        if answer.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(answer.body)
            if "failedEntries" in body:  # a bulk publish's own shape (reference 1.8)
                assert body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE", body
            elif path.startswith("/v1.0"):
                assert isinstance(body.get("errorCode"), str), body
                assert isinstance(body.get("message"), str), body
        else:
            plain = answer.body.decode()
            assert plain.startswith(("failed to unescape request parameter", "invalid api token")), plain


def accepted(call: Call, answer: Answer) -> None:
    """Count the messages the broker took from a publish to the in-memory `pubsub`."""
    path = unquote(call.raw_path.decode("latin-1"))
    for prefix in ("/v1.0/publish/bulk/pubsub/", "/v1.0-alpha1/publish/bulk/pubsub/"):
        if path.startswith(prefix):
            # 204: every entry went out; 500 with failedEntries: all but those.
            entries = len(bulk_entries_of(call.body)) if answer.status in (204, 500) else 0
            if answer.status == 500:
                entries -= len(json.loads(answer.body).get("failedEntries", ()))
            TALLY.accepted[path[len(prefix) :]] += entries
            return
    if path.startswith("/v1.0/publish/pubsub/") and answer.status == 204:
        TALLY.accepted[path[len("/v1.0/publish/pubsub/") :]] += 1


def bulk_entries_of(body: bytes) -> list[Any]:
    value = json.loads(body)
    return value if isinstance(value, list) else value["entries"]


@FUZZ
@given(call=calls())
def test_any_request_is_answered_in_daprds_format_without_a_5xx(
    fuzzed: tuple[DaprTestClient, Settled], call: Call
) -> None:
    client, _ = fuzzed
    answer = client.portal.call(_send, client.app, call)
    accepted(call, answer)
    check(call, answer)


@FUZZ
@given(
    pubsub=st.sampled_from(["pubsub"] * 7 + ["nope"]),
    topic=st.sampled_from(sorted(SUBSCRIBED)),
    content_type=st.sampled_from([*CONTENT_TYPES, "\x00", "text/\xff"]),
    body=bodies(),
    metadata=st.dictionaries(st.sampled_from(METADATA_KEYS), header_text, max_size=3),
)
def test_any_publish_is_refused_in_daprds_format_or_settled(
    fuzzed: tuple[DaprTestClient, Settled],
    pubsub: str,
    topic: str,
    content_type: str,
    body: bytes,
    metadata: dict[str, str],
) -> None:
    client, _ = fuzzed
    query = "&".join(f"metadata.{quote(k)}={quote(v)}" for k, v in metadata.items())
    call = Call(
        "POST",
        f"/v1.0/publish/{pubsub}/{topic}".encode(),
        query.encode(),
        [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())],
        body,
        ("127.0.0.1", 50000),
    )
    answer = client.portal.call(_send, client.app, call)
    accepted(call, answer)
    check(call, answer)


@FUZZ
@given(body=bulk_requests(), topic=st.sampled_from(sorted(SUBSCRIBED)))
def test_any_bulk_publish_is_refused_in_daprds_format_or_settled(
    fuzzed: tuple[DaprTestClient, Settled], body: bytes, topic: str
) -> None:
    client, _ = fuzzed
    call = Call(
        "POST",
        f"/v1.0-alpha1/publish/bulk/pubsub/{topic}".encode(),
        b"",
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        body,
        ("127.0.0.1", 50000),
    )
    answer = client.portal.call(_send, client.app, call)
    accepted(call, answer)
    check(call, answer)
