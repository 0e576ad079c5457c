"""The `fastapi-dapr` command (also `python -m fastapi_dapr`): `fastapi-dapr sidecar ...`.

The sidecar's flags are daprd's where daprd has one (reference 7.1); the few of
our own say so in their help. daprd flags of features the sidecar does not have
are refused by name, or accepted and ignored with a warning when ignoring them
changes nothing an app can see.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from .._go import parse_go_int
from .addresses import is_loopback
from .envelope import parse_go_bool

if TYPE_CHECKING:
    from .standalone import SidecarOptions

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

# daprd flags whose features the standalone sidecar does not have, and whose absence an
# app over HTTP does not notice: accepted, and named in a warning.
IGNORED_FLAGS = (
    "--dapr-internal-grpc-port",
    "--placement-host-address",
    "--scheduler-host-address",
    "--enable-profiling",
    "--profile-port",
)
# daprd flags that would change what the app or its callers see: refused by name.
REFUSED_FLAGS = {
    "--mode": "only self-hosted mode exists",
    "--enable-mtls": "there is no mTLS between standalone sidecars (they talk over loopback)",
    "--app-ssl": "the app channel is plain HTTP (--app-protocol http)",
    "--unix-domain-socket": "the Dapr API is served on a TCP port only",
    "--control-plane-address": "there is no control plane",
    "--sentry-address": "there is no control plane",
    "--allowed-origins": "browsers are refused on the API without a token (docs: The standalone sidecar)",
    "--dapr-public-port": "there is no public port",
    "--app-max-concurrency": "deliveries are bounded per subscription (64 in flight), not per app",
}
_LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING", "error": "ERROR"}
_LOG_LEVELS["fatal"] = "CRITICAL"
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def _port(text: str) -> int:
    try:
        value = parse_go_int(text)  # daprd's strconv.Atoi: no spaces, ASCII digits
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


def _positive(text: str) -> float:
    if not _DECIMAL.fullmatch(text):  # not `nan`, `inf`, `1_0`, spaces or other scripts' digits
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return value


def _at_least_one(unit: str = "") -> Callable[[str], int]:
    """A whole number (of `unit`, `MB`), 1 or more."""
    of_unit, in_unit = (f" of {unit}", f" ({unit})") if unit else ("", "")

    def parse(text: str) -> int:
        try:
            value = parse_go_int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{of_unit}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} must be at least 1{in_unit}")
        return value

    return parse


def _boolean(text: str) -> bool:
    """A Go flag's boolean (`strconv.ParseBool`): 1, t, T, TRUE, true, True, and the same for false."""
    try:
        return parse_go_bool(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false") from None


DEFAULT_METRICS_PORT = 9090  # daprd's
DEFAULT_GRPC_PORT = 50001  # daprd's


_EXAMPLES = """examples:
  an app on port 8000, the API on daprd's ports (HTTP 3500, gRPC 50001 with the [grpc] extra):
    fastapi-dapr sidecar --app-id orders --app-port 8000 --resources-path ./resources
  any free ports, named in the ready line:
    fastapi-dapr sidecar --app-id orders --app-port 8000 --dapr-http-port 0 --dapr-grpc-port 0
  an app serving Dapr's AppCallback over gRPC (a dapr.ext.grpc.App):
    fastapi-dapr sidecar --app-id orders --app-port 50051 --app-protocol grpc
  several apps on one machine, finding each other by app id:
    fastapi-dapr sidecar --app-id orders --app-port 8001 --dapr-http-port 3501 --name-resolution apps.json
"""


def parser() -> argparse.ArgumentParser:
    from .. import __version__

    # No abbreviations: `--app-prot 9201` is a mistake to name, not `--app-protocol 9201`.
    top = argparse.ArgumentParser(
        prog="fastapi-dapr", description="fastapi-dapr's command line.", allow_abbrev=False
    )
    top.add_argument("--version", action="version", version=f"fastapi-dapr {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sidecar = commands.add_parser(
        "sidecar",
        help="run a Dapr-compatible sidecar for an app in another process, in any language",
        description="A Dapr-compatible sidecar (Dapr's HTTP and gRPC APIs, pub/sub delivery, service "
        "invocation) for an app in another process. Flags are daprd's unless marked as ours. "
        "DAPR_API_TOKEN protects the API; APP_API_TOKEN is sent to the app.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sidecar.add_argument("--app-id", required=True, help="the app's id")
    sidecar.add_argument("--app-port", type=_port, help="the port the app listens on (none: no app)")
    sidecar.add_argument(
        "--app-protocol",
        default="http",
        help="how the app is reached: http (the default) or grpc (an app serving Dapr's AppCallback)",
    )
    sidecar.add_argument(
        "--app-channel-address", default="127.0.0.1", help="the app's host (default 127.0.0.1)"
    )
    sidecar.add_argument(
        "--dapr-http-port",
        type=_port,
        default=3500,
        help="the Dapr API's port (default 3500; 0: any free port)",
    )
    sidecar.add_argument(
        "--dapr-grpc-port",
        type=_port,
        default=None,
        help=f"the gRPC API's port (default {DEFAULT_GRPC_PORT} with the [grpc] extra; 0: any free port)",
    )
    sidecar.add_argument(
        "--dapr-listen-addresses",
        default="127.0.0.1",
        help="where the API listens: 127.0.0.1 (the default) or another loopback address",
    )
    sidecar.add_argument(
        "--resources-path", action="append", default=[], metavar="DIR", help="a resources folder (repeatable)"
    )
    sidecar.add_argument(
        "--components-path", action="append", default=[], metavar="DIR", help="deprecated: --resources-path"
    )
    sidecar.add_argument("--config", metavar="FILE", help="a Dapr Configuration resource")
    sidecar.add_argument(
        "--dapr-http-max-request-size",
        type=_at_least_one("MB"),
        default=4,
        metavar="MB",
        help="largest request body (MB)",
    )
    sidecar.add_argument(
        "--max-bulk-entries",
        type=_at_least_one(),
        default=10_000,
        metavar="N",
        help="ours: the most entries one bulk publish may have (default 10000)",
    )
    sidecar.add_argument(
        "--dapr-graceful-shutdown-seconds",
        type=_positive,
        default=5.0,
        metavar="SECONDS",
        help="how long in-flight calls and deliveries get to finish on SIGTERM (default 5)",
    )
    sidecar.add_argument("--log-level", default="info", choices=sorted(_LOG_LEVELS), help="default info")
    sidecar.add_argument(
        "--name-resolution",
        metavar="FILE",
        help="ours: a name-resolution file shared by the sidecars of this machine (docs: standalone)",
    )
    sidecar.add_argument(
        "--app-wait-timeout",
        type=_positive,
        metavar="SECONDS",
        help="ours: stop with an error when the app does not listen on its port by then (default: wait)",
    )
    sidecar.add_argument(
        "--enable-metrics",
        type=_boolean,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="serve Prometheus metrics at /metrics on --metrics-port, on the API's loopback address "
        "(default: off, unlike daprd, unless --metrics-port is given)",
    )
    sidecar.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help=f"the metrics port (default {DEFAULT_METRICS_PORT}; 0: any free port)",
    )
    sidecar.add_argument(
        "--log-as-json",
        type=_boolean,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="write log lines as JSON, one object a line, with their structured fields",
    )
    for flag in IGNORED_FLAGS:
        sidecar.add_argument(flag, nargs="?", const="true", help=argparse.SUPPRESS)
    for flag in REFUSED_FLAGS:
        sidecar.add_argument(flag, nargs="?", const="true", help=argparse.SUPPRESS)
    sidecar.set_defaults(fail=sidecar.error)
    return top


def _options(arguments: argparse.Namespace, fail: Callable[[str], NoReturn]) -> SidecarOptions:
    from .standalone import SidecarOptions

    for flag, reason in REFUSED_FLAGS.items():
        if getattr(arguments, flag[2:].replace("-", "_")) is not None:
            fail(f"{flag} is not supported: {reason}")
    # daprd's ValidateSelfHostedAppID: a dot would be read as `{id}.{namespace}`.
    if not arguments.app_id:
        fail("--app-id: parameter app-id cannot be empty")
    if "." in arguments.app_id:
        fail(f"--app-id {arguments.app_id}: parameter app-id cannot contain dots")
    if arguments.app_port == 0:
        fail("--app-port 0: the app's port is the one it listens on (1 to 65535)")
    if arguments.app_protocol not in ("http", "grpc"):
        fail(f"--app-protocol {arguments.app_protocol}: http or grpc are supported (not grpcs, https or h2c)")
    grpc_port = _grpc_port(arguments, fail)
    listen = arguments.dapr_listen_addresses.strip()
    if listen == "localhost":
        listen = "127.0.0.1"
    if not is_loopback(listen, brackets=True):
        fail(f"--dapr-listen-addresses {listen}: the API listens on one loopback address only")
    enabled = arguments.enable_metrics
    if enabled is None:
        enabled = arguments.metrics_port is not None
    metrics_port = (
        (arguments.metrics_port if arguments.metrics_port is not None else DEFAULT_METRICS_PORT)
        if enabled
        else None
    )
    return SidecarOptions(
        app_id=arguments.app_id,
        app_port=arguments.app_port,
        app_channel_address=arguments.app_channel_address,
        dapr_http_port=arguments.dapr_http_port,
        resources_paths=[*arguments.resources_path, *arguments.components_path],
        max_body_size=arguments.dapr_http_max_request_size * 1024 * 1024,
        max_bulk_entries=arguments.max_bulk_entries,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
        app_api_token=os.environ.get("APP_API_TOKEN") or None,
        name_resolution=arguments.name_resolution,
        app_wait_timeout=arguments.app_wait_timeout,
        graceful_shutdown_seconds=arguments.dapr_graceful_shutdown_seconds,
        log_level=arguments.log_level,
        listen_host=listen.strip("[]"),
        metrics_port=metrics_port,
        log_as_json=arguments.log_as_json,
        dapr_grpc_port=grpc_port,
        app_protocol=arguments.app_protocol,
    )


def _grpc_port(arguments: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int | None:
    """The gRPC API's port: the flag's, else daprd's default when the [grpc] extra is there
    (None: not served, and said so at start)."""
    from .grpc_api import require

    asked = arguments.dapr_grpc_port is not None or arguments.app_protocol == "grpc"
    try:
        require("--dapr-grpc-port" if arguments.dapr_grpc_port is not None else "--app-protocol grpc")
    except ImportError as exc:
        if asked:
            fail(str(exc))
        return None
    return arguments.dapr_grpc_port if arguments.dapr_grpc_port is not None else DEFAULT_GRPC_PORT


def _configure_logging(level: str, *, as_json: bool = False, app_id: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        from .._logs import JsonFormatter

        handler.setFormatter(JsonFormatter(app_id=app_id))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("fastapi_dapr")
    package.addHandler(handler)
    package.setLevel(_LOG_LEVELS[level])
    package.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    options = _options(arguments, arguments.fail)
    _configure_logging(options.log_level, as_json=options.log_as_json, app_id=options.app_id)
    for flag in IGNORED_FLAGS:
        if getattr(arguments, flag[2:].replace("-", "_")) is not None:
            logger.warning("%s is ignored: the standalone sidecar has no such feature", flag)
    if arguments.config:
        from .._exceptions import ResourceError
        from .configuration import load_configuration

        try:
            configuration = load_configuration(arguments.config)
        except ResourceError as exc:
            logger.error("%s", exc)
            return 1
        for warning in configuration.warnings():
            logger.warning("%s", warning)
    from .standalone import StandaloneSidecar

    return asyncio.run(StandaloneSidecar(options).run())
