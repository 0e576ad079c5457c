"""The `Resiliency` resource as frozen pydantic models, and the policies built from it (reference 8)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import ConfigDict, Field, PlainValidator, field_validator

from .._retry import RetryPolicy
from .breaker import BreakerTemplate, compile_trip
from .resiliency import AppTarget, ComponentTarget, PolicyNames, ResiliencyResource
from .resource_fields import (
    JsonSchema,
    Names,
    PolicyDuration,
    ResourceModel,
    Section,
    StatusCodes,
    expression,
    problem,
    shown,
    type_name,
)
from .resource_models import Document

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


class RetryMatching(ResourceModel):
    http_status_codes: Annotated[frozenset[int] | None, StatusCodes(100, 599)] = Field(
        None, alias="httpStatusCodes"
    )
    grpc_status_codes: Annotated[frozenset[int] | None, StatusCodes(0, 16)] = Field(
        None, alias="gRPCStatusCodes"
    )


class RetryPolicyModel(ResourceModel):
    model_config = ConfigDict(extra="forbid")
    noun = "a retry policy"
    policy: str | None = Field(None, description="constant (the default) or exponential")
    duration: PolicyDuration = Field(5.0, json_schema_extra={"default": "5s"})
    max_interval: PolicyDuration = Field(60.0, alias="maxInterval", json_schema_extra={"default": "60s"})
    max_retries: int | None = Field(None, alias="maxRetries", description="-1: no limit (the default)")
    matching: Section[RetryMatching] = Field(None, validate_default=True)

    @field_validator("policy")
    @classmethod
    def _policy(cls, policy: str | None) -> str | None:
        if policy is not None and policy.lower() not in ("constant", "exponential"):
            raise problem(f"must be constant or exponential, not {shown(policy)}")
        return policy

    @field_validator("max_retries")
    @classmethod
    def _max_retries(cls, count: int | None) -> int | None:
        if count is not None and count < -1:
            raise problem("must be -1 (no limit), 0 or more")
        return count

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            policy="exponential" if (self.policy or "").lower() == "exponential" else "constant",
            duration=self.duration,
            # daprd's fixed exponential values (reference 8): the CRD cannot set them.
            initial_interval=0.5,
            multiplier=1.5,
            randomization_factor=0.5,
            max_interval=self.max_interval,
            max_retries=-1 if self.max_retries is None else self.max_retries,
            max_elapsed=900.0,
            http_status_codes=self.matching.http_status_codes,
            grpc_status_codes=self.matching.grpc_status_codes,
        )


class Trip(NamedTuple):
    """A circuit breaker's `trip` expression, compiled."""

    text: str
    check: Any  # what `compile_trip` returns; None for an empty text, which is no expression


def _trip(text: Any) -> Trip:
    if not isinstance(text, str):
        raise problem(f"must be a string, not {type_name(text)}")
    if not text:
        return Trip(text, None)
    expression(text)
    try:
        return Trip(text, compile_trip(text))
    except ValueError as exc:
        raise problem(str(exc)) from None


TripExpression = Annotated[Trip, PlainValidator(_trip), JsonSchema({"type": "string"})]


class BreakerModel(ResourceModel):
    model_config = ConfigDict(extra="forbid")
    noun = "a circuit breaker"
    max_requests: int | None = Field(None, alias="maxRequests")
    interval: PolicyDuration = Field(0.0, json_schema_extra={"default": "0s"})
    timeout: PolicyDuration = Field(0.0, json_schema_extra={"default": "60s"})  # 0 is 60s too
    trip: TripExpression | None = Field(None, description="a CEL expression")

    @field_validator("max_requests")
    @classmethod
    def _max_requests(cls, count: int | None) -> int | None:
        if count is not None and count < 0:
            raise problem("must be 0 or more")
        return count

    def template(self, name: str) -> BreakerTemplate:
        template = BreakerTemplate(
            name=name,
            max_requests=self.max_requests or 1,
            interval=self.interval,
            timeout=self.timeout or 60.0,
        )
        if self.trip is not None and self.trip.check is not None:
            template = dataclasses.replace(template, trip=self.trip.check, trip_text=self.trip.text)
        return template


class PolicyNamesModel(ResourceModel):
    shape = "a mapping of timeout, retry and circuitBreaker"
    timeout: str | None = None
    retry: str | None = None
    circuit_breaker: str | None = Field(None, alias="circuitBreaker")

    def names(self) -> PolicyNames:
        return PolicyNames(
            timeout=self.timeout or None,
            retry=self.retry or None,
            circuit_breaker=self.circuit_breaker or None,
        )


class AppTargetModel(PolicyNamesModel):
    circuit_breaker_cache_size: int | None = Field(None, alias="circuitBreakerCacheSize")


class ComponentTargetModel(ResourceModel):
    shape = "a mapping with inbound and outbound"
    inbound: PolicyNamesModel | None = None
    outbound: PolicyNamesModel | None = None


class Policies(ResourceModel):
    timeouts: Names[PolicyDuration] = Field(None, validate_default=True)
    retries: Names[RetryPolicyModel] = Field(None, validate_default=True)
    circuit_breakers: Names[BreakerModel] = Field(None, alias="circuitBreakers", validate_default=True)


class Targets(ResourceModel):
    apps: Names[AppTargetModel | None] = Field(None, validate_default=True)
    components: Names[ComponentTargetModel] = Field(None, validate_default=True)
    actors: dict[Any, Any] | None = Field(None, description="not used: no actors here")


class ResiliencySpec(ResourceModel):
    policies: Section[Policies] = Field(None, validate_default=True)
    targets: Section[Targets] = Field(None, validate_default=True)


class ResiliencyDocument(Document):
    api_version: str | None = Field(None, alias="apiVersion", description="any: daprd reads every version")
    kind: Literal["Resiliency"]
    spec: Section[ResiliencySpec] = Field(None, validate_default=True)


_NO_NAMES = PolicyNamesModel.model_validate({})


def read_resiliency(document: ResiliencyDocument, source: str) -> ResiliencyResource:
    """The policies and targets of one Resiliency resource."""
    name = document.metadata.name
    policies, targets = document.spec.policies, document.spec.targets
    if targets.actors:
        logger.info("%s: Resiliency %r: actor targets are not used (no actors here)", source, name)
    return ResiliencyResource(
        name=name,
        source=source,
        scopes=tuple(document.scopes or ()),
        timeouts=dict(policies.timeouts),
        retries={key: policy.retry_policy() for key, policy in policies.retries.items()},
        circuit_breakers={key: breaker.template(key) for key, breaker in policies.circuit_breakers.items()},
        apps={
            app: AppTarget(
                (target or _NO_NAMES).names(),
                cache_size=(target and target.circuit_breaker_cache_size) or 100,
            )
            for app, target in targets.apps.items()
        },
        components={
            component: ComponentTarget(
                inbound=(target.inbound or _NO_NAMES).names(), outbound=(target.outbound or _NO_NAMES).names()
            )
            for component, target in targets.components.items()
        },
    )
