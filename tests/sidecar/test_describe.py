"""The one `describe` of a failure (`sidecar.errors.describe`), short and with a peer."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

from fastapi_dapr.sidecar.errors import describe
from fastapi_dapr.sidecar.http1 import MalformedAnswer

REFUSED = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (REFUSED, "Connection refused"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), "No such file or directory"),
        (asyncio.TimeoutError(), "no answer within the timeout"),
        (OSError("no words from the OS"), "no words from the OS"),
        (OSError(), "OSError"),
        (ValueError("bad"), "bad"),
        (RuntimeError(), "RuntimeError"),
        (MalformedAnswer("\r\n\x00 " * 3), "\r\n\x00 " * 3),  # told as it is; the caller quotes it
    ],
)
def test_short_words(exc: BaseException, words: str) -> None:
    assert describe(exc) == words


def certificate_refused() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


def handshake_failed() -> ssl.SSLError:
    exc = ssl.SSLError(1, "wrong version")
    exc.reason = "WRONG_VERSION_NUMBER"  # set by the ssl module on the errors it raises
    return exc


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (certificate_refused(), "TLS: the certificate of h:1 was refused: self-signed certificate"),
        (handshake_failed(), "TLS handshake with h:1 failed: WRONG_VERSION_NUMBER"),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "the host h could not be resolved: Name or service not known",
        ),
        (MalformedAnswer("the status line is broken"), "h:1: the status line is broken"),
        (asyncio.TimeoutError(), "no answer from h:1 within the timeout"),
        (REFUSED, "could not connect to h:1: Connection refused"),
        (OSError("raw"), "could not connect to h:1: raw"),
        (ValueError("odd"), "ValueError talking to h:1: odd"),
    ],
)
def test_words_for_a_peer(exc: BaseException, words: str) -> None:
    assert describe(exc, ("h", 1)) == words


def test_a_peer_without_host_or_port_is_shown_as_before() -> None:
    assert describe(REFUSED, (None, None)) == "could not connect to None:None: Connection refused"
