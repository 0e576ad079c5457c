"""Client certificates given as PEM values (resources and component metadata hold them so)."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile

__all__: list[str] = []


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


def load_client_certificate(
    context: ssl.SSLContext,
    certificate: str,
    private_key: str,
    *,
    names: tuple[str, str] = ("certificate", "privateKey"),
) -> None:
    """Load a PEM certificate and key into `context`; `ValueError` naming the fields
    (`names`: the certificate's, the key's) when they cannot be used."""
    certificate_name, key_name = names
    # The ssl module loads key pairs from files only: write them where only this
    # process can read them, load, and remove them at once.
    with tempfile.TemporaryDirectory(prefix="fastapi-dapr-tls-") as folder:
        cert_path = os.path.join(folder, "cert.pem")
        key_path = os.path.join(folder, "key.pem")
        for path, text in ((cert_path, certificate), (key_path, private_key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
        try:
            # A password callback, so that OpenSSL never prompts on a terminal for an encrypted key.
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except _EncryptedKey:
            raise ValueError(f"{key_name} is encrypted: give it unencrypted (from a secret store)") from None
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise ValueError(f"{certificate_name} and {key_name} are not a PEM key pair: {exc}") from None
        finally:
            for path in (cert_path, key_path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
