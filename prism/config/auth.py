"""The ``auth`` section (who a caller is) and a namespace's ``access`` section (what it may do).

Both are read by the request pipeline's authentication and authorization stages
(``prism.proxy.assembly``): nothing here is set yet, and with nothing set every caller is
anonymous and may call every namespace, as before these sections existed.
"""

from __future__ import annotations

from prism.config._model import Model

__all__ = ["AccessConfig", "AuthConfig"]


class AuthConfig(Model):
    """How the front door authenticates callers (client certificates, bearer tokens)."""


class AccessConfig(Model):
    """Who may call which operations of a namespace."""

    anonymous: bool = False
    """Callers without credentials may use this namespace. The default is to refuse them."""
