"""TLS settings: the front door's server side, and the proxy's side of a remote plugin's mTLS."""

from __future__ import annotations

from pydantic import model_validator

from prism.config._model import FieldError, Model
from prism.config._types import ConfigPath, Text

__all__ = ["RemoteTlsConfig", "TlsConfig"]


class TlsConfig(Model):
    """Server TLS for the front door (ALPN h2). ``client_ca`` turns on mTLS (client certs
    required unless ``auth.mtls.required`` is false)."""

    cert: ConfigPath
    """Server certificate chain (PEM)."""
    key: ConfigPath
    """Server private key (PEM)."""
    client_ca: ConfigPath | None = None
    """CA for client certificates; when set, clients must present one (mTLS), or may
    (``auth.mtls.required: false``)."""


class RemoteTlsConfig(Model):
    """The proxy's side of an mTLS connection to a remote plugin."""

    ca: ConfigPath
    """CA that signed the remote plugin's certificate (PEM)."""
    cert: ConfigPath | None = None
    """The proxy's client certificate (PEM; may hold the key too)."""
    key: ConfigPath | None = None
    """The client certificate's private key (PEM), when not in cert."""
    server_hostname: Text | None = None
    """Name to verify in the plugin's certificate (default: the endpoint's host)."""

    @model_validator(mode="after")
    def _key_needs_cert(self) -> RemoteTlsConfig:
        if self.key is not None and self.cert is None:
            raise FieldError("key", "a client key without a client certificate (cert)")
        return self
