"""``prism plugin keygen|sign``: the operator's half of plugin signature checks.

``keygen`` makes an ed25519 key pair; the public half goes into
``plugin_security.trusted_keys``. ``sign`` writes the detached ``<artifact>.sig`` that
:mod:`prism.hosting.verify` checks: over a file's bytes, or over a directory's manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prism.cli.admin import CliError
from prism.hosting.verify import write_signature


def public_key_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def keygen(out: Path) -> tuple[Path, Path]:
    """Write a new private key to ``out`` (PEM, PKCS#8, mode 0600) and its public key to
    ``out.pub`` (PEM). Existing files are never overwritten: losing a release key is worse
    than an error."""
    pub_path = public_key_path(out)
    for path in (out, pub_path):
        if path.exists():
            raise CliError(f"{path} already exists; not overwriting it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(out, private_pem, 0o600)  # created 0600: never readable by others, not even briefly
    _write_new(pub_path, public_pem, 0o644)
    return out, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted (it would need a password we do not ask for).
        raise CliError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"{path} is not an ed25519 private key (see `prism plugin keygen`)")
    return key


def sign(artifact: Path, key_path: Path) -> Path:
    """Sign a plugin file or package directory; returns the ``.sig`` path written."""
    if not artifact.exists():
        raise CliError(f"{artifact} does not exist")
    key = load_private_key(key_path)
    try:
        return write_signature(artifact, key)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot sign {artifact}: {exc}") from None
