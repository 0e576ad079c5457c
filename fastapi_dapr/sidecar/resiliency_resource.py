"""A `Resiliency` resource read from its YAML: policies and targets (reference 8)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .._go import parse_duration, parse_go_int
from .._retry import RetryPolicy
from .breaker import BreakerTemplate, compile_trip
from .document import Document, check_length, shown, type_name
from .resiliency import AppTarget, ComponentTarget, PolicyNames, ResiliencyResource

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


def _duration(doc: Document, value: Any, field: str) -> float:
    """A Resiliency duration: a Go duration, or an integer of milliseconds (daprd's parseDuration)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise doc.error(field, f"must be a duration such as '5s', not {type_name(value)}")
    try:
        seconds = parse_duration(str(value), integer_unit=1e-3)
    except ValueError:
        raise doc.error(field, f"{shown(value)} is not a duration") from None
    if seconds < 0:
        raise doc.error(field, f"{shown(value)} is negative")
    return seconds


def _status_codes(doc: Document, text: Any, field: str, low: int, high: int) -> frozenset[int] | None:
    """`matching` codes: a comma-separated list of codes and ranges (`429,500-599`)."""
    if text is None or text == "":
        return None
    if not isinstance(text, (str, int)) or isinstance(text, bool):
        raise doc.error(field, "must be a string of codes and ranges such as '429,500-599'")
    codes: set[int] = set()
    for part in str(text).split(","):
        part = part.strip(" ")  # daprd refuses spaces around a code; they are accepted here
        if not part:
            continue
        start_text, dash, end_text = part.partition("-")
        try:  # as daprd's strconv.Atoi: ASCII digits, an optional sign
            start = parse_go_int(start_text)
            end = parse_go_int(end_text) if dash else start
        except ValueError:
            raise doc.error(field, f"{shown(part)} is not a code or a range of codes") from None
        if not (low <= start <= high and low <= end <= high):
            raise doc.error(field, f"{part!r}: codes go from {low} to {high}")
        if end < start:
            raise doc.error(field, f"{part!r}: the range ends before it starts")
        codes.update(range(start, end + 1))
    return frozenset(codes)


def _retry_policy(doc: Document, raw: Any, field: str) -> RetryPolicy:
    if not isinstance(raw, dict):
        raise doc.error(field, "must be a mapping")
    known = {"policy", "duration", "maxInterval", "maxRetries", "matching"}
    for key in raw:
        if key not in known:
            raise doc.error(
                f"{field}.{key}", f"is not a field of a retry policy ({', '.join(sorted(known))})"
            )
    kind = str(doc.get(raw, "policy", f"{field}.policy", str, default="constant")).lower()
    if kind not in ("constant", "exponential"):
        raise doc.error(f"{field}.policy", f"must be constant or exponential, not {shown(raw['policy'])}")
    max_retries = doc.get(raw, "maxRetries", f"{field}.maxRetries", int, default=-1)
    if max_retries < -1:
        raise doc.error(f"{field}.maxRetries", "must be -1 (no limit), 0 or more")
    matching = doc.mapping(raw, "matching", f"{field}.matching")
    return RetryPolicy(
        policy="exponential" if kind == "exponential" else "constant",
        duration=_duration(doc, raw.get("duration", "5s"), f"{field}.duration"),
        # daprd's fixed exponential values (reference 8): the CRD cannot set them.
        initial_interval=0.5,
        multiplier=1.5,
        randomization_factor=0.5,
        max_interval=_duration(doc, raw.get("maxInterval", "60s"), f"{field}.maxInterval"),
        max_retries=max_retries,
        max_elapsed=900.0,
        http_status_codes=_status_codes(
            doc, matching.get("httpStatusCodes"), f"{field}.matching.httpStatusCodes", 100, 599
        ),
        grpc_status_codes=_status_codes(
            doc, matching.get("gRPCStatusCodes"), f"{field}.matching.gRPCStatusCodes", 0, 16
        ),
    )


def _breaker(doc: Document, name: str, raw: Any, field: str) -> BreakerTemplate:
    if not isinstance(raw, dict):
        raise doc.error(field, "must be a mapping")
    known = {"maxRequests", "interval", "timeout", "trip"}
    for key in raw:
        if key not in known:
            raise doc.error(
                f"{field}.{key}", f"is not a field of a circuit breaker ({', '.join(sorted(known))})"
            )
    max_requests = doc.get(raw, "maxRequests", f"{field}.maxRequests", int, default=1)
    if max_requests < 0:
        raise doc.error(f"{field}.maxRequests", "must be 0 or more")
    trip_text = doc.get(raw, "trip", f"{field}.trip", str)
    template = BreakerTemplate(
        name=name,
        max_requests=max_requests or 1,
        interval=_duration(doc, raw.get("interval", 0), f"{field}.interval"),
        timeout=_duration(doc, raw.get("timeout", 0), f"{field}.timeout") or 60.0,
    )
    if trip_text:
        check_length(doc, trip_text, f"{field}.trip")
        try:
            trip = compile_trip(trip_text)
        except ValueError as exc:
            raise doc.error(f"{field}.trip", str(exc)) from None
        template = dataclasses.replace(template, trip=trip, trip_text=trip_text)
    return template


def _policy_names(doc: Document, raw: Any, field: str) -> PolicyNames:
    if raw is None:
        return PolicyNames()
    if not isinstance(raw, dict):
        raise doc.error(field, "must be a mapping of timeout, retry and circuitBreaker")
    return PolicyNames(
        timeout=doc.get(raw, "timeout", f"{field}.timeout", str) or None,
        retry=doc.get(raw, "retry", f"{field}.retry", str) or None,
        circuit_breaker=doc.get(raw, "circuitBreaker", f"{field}.circuitBreaker", str) or None,
    )


def read_resiliency(doc: Document) -> ResiliencyResource:
    spec = doc.mapping(doc.raw, "spec", "spec")
    policies = doc.mapping(spec, "policies", "spec.policies")
    targets = doc.mapping(spec, "targets", "spec.targets")
    timeouts = {
        name: _duration(doc, value, f"spec.policies.timeouts.{name}")
        for name, value in doc.items(policies, "timeouts", "spec.policies.timeouts")
    }
    retries = {
        name: _retry_policy(doc, value, f"spec.policies.retries.{name}")
        for name, value in doc.items(policies, "retries", "spec.policies.retries")
    }
    breakers = {
        name: _breaker(doc, name, value, f"spec.policies.circuitBreakers.{name}")
        for name, value in doc.items(policies, "circuitBreakers", "spec.policies.circuitBreakers")
    }
    apps = {}
    for app, raw in doc.items(targets, "apps", "spec.targets.apps"):
        field = f"spec.targets.apps.{app}"
        names = _policy_names(doc, raw, field)
        size = doc.get(
            raw or {}, "circuitBreakerCacheSize", f"{field}.circuitBreakerCacheSize", int, default=0
        )
        apps[app] = AppTarget(names, cache_size=size or 100)
    components = {}
    for component, raw in doc.items(targets, "components", "spec.targets.components"):
        field = f"spec.targets.components.{component}"
        if not isinstance(raw, dict):
            raise doc.error(field, "must be a mapping with inbound and outbound")
        components[component] = ComponentTarget(
            inbound=_policy_names(doc, raw.get("inbound"), f"{field}.inbound"),
            outbound=_policy_names(doc, raw.get("outbound"), f"{field}.outbound"),
        )
    if doc.mapping(targets, "actors", "spec.targets.actors"):
        logger.info("%s: Resiliency %r: actor targets are not used (no actors here)", doc.source, doc.name)
    return ResiliencyResource(
        name=doc.name,
        source=doc.source,
        scopes=doc.scopes(),
        timeouts=timeouts,
        retries=retries,
        circuit_breakers=breakers,
        apps=apps,
        components=components,
    )
