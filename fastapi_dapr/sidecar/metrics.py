"""Prometheus metrics of the sidecar, in the text exposition format (version 0.0.4).

No dependency: counters and histograms with labels, kept in plain dictionaries
keyed by the tuple of label values, and written out on a scrape. Everything
runs on the event loop's thread, so an update is a dictionary operation and
needs no lock. Metric names, labels, units and buckets are daprd's where daprd
has the metric (`pkg/diagnostics`); the others are named `fastapi_dapr_*`.
docs/observability.md lists them all.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

__all__: list[str] = []

# daprd's default latency distribution, in milliseconds (its `latencyDistributionBuckets`).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 65, 80, 100, 130, 160, 200, 250, 300,
    400, 500, 650, 800, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
)  # fmt: skip


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    """A counter: one value per combination of label values, only ever increased."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def value(self, key: tuple[str, ...]) -> float:
        return self.values.get(key, 0)

    def lines(self) -> Iterable[str]:
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labels, key)} {_number(value)}"


class Histogram:
    """A histogram with fixed upper bounds; each series is its bucket counts, its sum and its count."""

    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.buckets = tuple(sorted(buckets))
        # Per series: a count per bucket (not cumulative), then +Inf's, then the sum.
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1  # the first bound >= value: `le`
        series[-1] += value

    def lines(self) -> Iterable[str]:
        for key, series in sorted(self.series.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series, strict=False):
                cumulative += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                labels = _labels(self.labels, key, 'le="' + le + '"')
                yield f"{self.name}_bucket{labels} {_number(cumulative)}"
            yield f"{self.name}_sum{_labels(self.labels, key)} {_number(series[-1])}"
            yield f"{self.name}_count{_labels(self.labels, key)} {_number(cumulative)}"


Metric = Counter | Histogram


class Metrics:
    """Every metric of one sidecar (one app id), and the events that update them."""

    def __init__(self, app_id: str = "", namespace: str = "default") -> None:
        self.app_id = app_id
        self.namespace = namespace
        self._metrics: list[Metric] = []
        component = ("app_id", "component", "namespace")
        # -- publishing (daprd's api/http: the publish and bulk publish APIs) --
        self.egress = self._counter(
            "dapr_component_pubsub_egress_count",
            "The number of outgoing messages published to the pub/sub component.",
            (*component, "success", "topic"),
        )
        self.egress_latency = self._histogram(
            "dapr_component_pubsub_egress_latencies",
            "The latency of the response from the pub/sub component (ms).",
            (*component, "success", "topic"),
        )
        self.bulk_egress = self._counter(
            "dapr_component_pubsub_egress_bulk_count",
            "The number of bulk publish calls to the pub/sub component.",
            (*component, "success", "topic"),
        )
        self.bulk_egress_events = self._counter(
            "dapr_component_pubsub_egress_bulk_event_count",
            "The number of outgoing messages to the pub/sub component published through bulk publish API.",
            (*component, "success", "topic"),
        )
        self.bulk_egress_latency = self._histogram(
            "dapr_component_pubsub_egress_bulk_latencies",
            "The latency of the response for the bulk publish call from the pub/sub component (ms).",
            (*component, "success", "topic"),
        )
        # -- delivery (daprd's postman: one per POST to the app, and per message not posted) --
        ingress_labels = (*component, "process_status", "status", "topic")
        self.ingress = self._counter(
            "dapr_component_pubsub_ingress_count",
            "The number of incoming messages arriving from the pub/sub component.",
            ingress_labels,
        )
        self.ingress_latency = self._histogram(
            "dapr_component_pubsub_ingress_latencies",
            "The consuming app event processing latency (ms).",
            ingress_labels,
        )
        self.outcomes = self._counter(
            "fastapi_dapr_pubsub_messages_total",
            "Messages settled by the delivery engine, by what became of them.",
            (*component, "topic", "outcome"),
        )
        self.retries = self._counter(
            "fastapi_dapr_pubsub_delivery_retries_total",
            "Deliveries retried (a wait before another POST), under any retry policy.",
            (*component, "topic"),
        )
        self.parked_messages = self._counter(
            "fastapi_dapr_pubsub_parked_total",
            "Messages set aside after maxDeliveryCount deliveries, for an operator to replay (pubsub.redis).",
            (*component, "topic"),
        )
        self.dead_letters = self._counter(
            "fastapi_dapr_pubsub_dead_letter_total",
            "Dead-letter publishes, by their success.",
            (*component, "topic", "dead_letter_topic", "success"),
        )
        # -- service invocation (daprd's direct messaging: one per attempt) --
        self.invocations_sent = self._counter(
            "dapr_service_invocation_req_sent_total",
            "The number of requests sent via service invocation.",
            ("app_id", "dst_app_id", "type"),
        )
        self.invocations_received = self._counter(
            "dapr_service_invocation_res_recv_total",
            "The number of responses received via service invocation.",
            ("app_id", "src_app_id", "status", "type"),
        )
        self.invocation_latency = self._histogram(
            "dapr_service_invocation_res_recv_latency_ms",
            "The latency of service invocation response (ms).",
            ("app_id", "src_app_id", "status"),
        )
        # -- resiliency --
        self.activations = self._counter(
            "dapr_resiliency_activations_total",
            "Number of times a resiliency policy has been activated in a building block after a "
            "failure or after a state change.",
            ("app_id", "name", "policy", "namespace", "flow_direction", "target", "status"),
        )
        # -- the gRPC API (daprd's OpenCensus gRPC server views) --
        self.grpc_completed = self._counter(
            "dapr_grpc_io_server_completed_rpcs",
            "Count of RPCs by method and status.",
            ("app_id", "grpc_server_method", "grpc_server_status"),
        )
        self.grpc_latency = self._histogram(
            "dapr_grpc_io_server_server_latency",
            "Distribution of server latency in milliseconds, by method.",
            ("app_id", "grpc_server_method"),
        )

    def _counter(self, name: str, documentation: str, labels: Sequence[str]) -> Counter:
        metric = Counter(name, documentation, labels)
        self._metrics.append(metric)
        return metric

    def _histogram(self, name: str, documentation: str, labels: Sequence[str]) -> Histogram:
        metric = Histogram(name, documentation, labels, LATENCY_BUCKETS_MS)
        self._metrics.append(metric)
        return metric

    # -- events -----------------------------------------------------------------

    def published(self, pubsub: str, topic: str, success: bool, elapsed_ms: float) -> None:
        key = (self.app_id, pubsub, self.namespace, "true" if success else "false", topic)
        self.egress.inc(key)
        self.egress_latency.observe(key, elapsed_ms)

    def published_bulk(self, pubsub: str, topic: str, success: bool, events: int, elapsed_ms: float) -> None:
        key = (self.app_id, pubsub, self.namespace, "true" if success else "false", topic)
        self.bulk_egress.inc(key)
        if events:
            self.bulk_egress_events.inc((self.app_id, pubsub, self.namespace, "true", topic), events)
        self.bulk_egress_latency.observe(key, elapsed_ms)

    def delivered(
        self, pubsub: str, topic: str, process_status: str, status: str, elapsed_ms: float | None
    ) -> None:
        """One POST to the app (`elapsed_ms` its time), or one message not posted (None)."""
        key = (self.app_id, pubsub, self.namespace, process_status, status or process_status, topic)
        self.ingress.inc(key)
        if elapsed_ms is not None:
            self.ingress_latency.observe(key, elapsed_ms)

    def settled(self, pubsub: str, topic: str, outcome: str) -> None:
        self.outcomes.inc((self.app_id, pubsub, self.namespace, topic, outcome))

    def retried(self, pubsub: str, topic: str) -> None:
        self.retries.inc((self.app_id, pubsub, self.namespace, topic))

    def parked(self, pubsub: str, topic: str) -> None:
        self.parked_messages.inc((self.app_id, pubsub, self.namespace, topic))

    def dead_lettered(self, pubsub: str, topic: str, dead_letter_topic: str, success: bool) -> None:
        key = (self.app_id, pubsub, self.namespace, topic, dead_letter_topic, "true" if success else "false")
        self.dead_letters.inc(key)

    def invocation_sent(self, target: str, streaming: bool) -> None:
        self.invocations_sent.inc((self.app_id, target, "streaming" if streaming else "unary"))

    def invocation_answered(self, target: str, status: int, streaming: bool, elapsed_ms: float) -> None:
        code = str(status)
        self.invocations_received.inc((self.app_id, target, code, "streaming" if streaming else "unary"))
        self.invocation_latency.observe((self.app_id, target, code), elapsed_ms)

    def activated(self, resiliency: str, policy: str, direction: str, target: str, status: str = "") -> None:
        key = (self.app_id, resiliency, policy, self.namespace, direction, target, status)
        self.activations.inc(key)

    def grpc_completed_rpc(self, method: str, status: str, elapsed_ms: float) -> None:
        """One call of the gRPC API: its full method name and the name of its status code."""
        self.grpc_completed.inc((self.app_id, method, status))
        self.grpc_latency.observe((self.app_id, method), elapsed_ms)

    # -- the scrape ---------------------------------------------------------------

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._metrics:
            lines.append(f"# HELP {metric.name} {metric.documentation}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.lines())
        return ("\n".join(lines) + "\n").encode()
