"""Checks on a plugin before the proxy loads or launches it.

In this order, as RFC-008's ``verify_plugin``: the artifact's permissions (so nothing is read
from a file another user can change under us), its ed25519 signature, and, once loaded, the
plugin API version it declares. Each refusal is a :class:`PluginRefused` naming the plugin and
the reason.

Signatures are detached: ``<artifact>.sig`` beside the artifact holds a 64-byte ed25519
signature, raw or base64. A file is signed over its bytes; a directory over its manifest
(:func:`manifest`), so that a byte-compiled cache cannot break a signature.

A signature check reads every file once and verifies those bytes; it returns them
(:class:`VerifiedArtifact`) so the plugin can be imported from exactly what was verified
(:mod:`prism.hosting.loader`), never from the disk again: bytecode, which the manifest leaves
out, is then never executed either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PROXY_PLUGIN_API_VERSION = "1.0"
MANIFEST_HEADER = b"prism-plugin-manifest v1\n"  # so a manifest never equals a file's bytes


class PluginRefused(Exception):
    """The proxy will not load this plugin; ``reason`` says why."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"plugin {plugin!r} refused: {reason}")
        self.plugin = plugin
        self.reason = reason


# --- permissions -------------------------------------------------------------------------------


def check_permissions(plugin: str, path: Path) -> None:
    """Refuse an artifact that a user other than us (or root) could modify.

    Checked: the artifact, the directory containing it (which could swap it), and for a
    directory artifact everything inside it (``__pycache__`` too: Python would load it).
    Refused: world-writable, or owned by someone other than the current user and root. Links
    are followed: what matters is the file that would be loaded.
    """
    try:
        target = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        raise PluginRefused(plugin, f"{path} cannot be read: {exc.strerror}") from None
    _check_one(plugin, target.parent, "containing directory")
    _check_one(plugin, target, "plugin")
    if target.is_dir():
        for root, dirs, files in os.walk(target):
            for entry in (*dirs, *files):
                _check_one(plugin, Path(root) / entry, "plugin file")


def _check_one(plugin: str, path: Path, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # a dangling link inside a plugin directory cannot be loaded either
    if st.st_mode & stat.S_IWOTH:
        raise PluginRefused(plugin, f"{what} {path} is world-writable")
    if st.st_uid not in (os.geteuid(), 0):
        raise PluginRefused(plugin, f"{what} {path} is owned by uid {st.st_uid}, not by us or root")


# --- API version -------------------------------------------------------------------------------


def parse_api_version(version: str) -> tuple[int, int]:
    """``"1.2"`` → ``(1, 2)``; ValueError for anything but two dot-separated decimal numbers."""
    major, sep, minor = version.partition(".")
    if not (sep and major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise ValueError(f"plugin API version {version!r} is not of the form MAJOR.MINOR")
    return int(major), int(minor)


def is_api_compatible(plugin_version: str, proxy_version: str = PROXY_PLUGIN_API_VERSION) -> bool:
    """Same major version, and the plugin needs no newer minor version than the proxy has."""
    plugin_major, plugin_minor = parse_api_version(plugin_version)
    proxy_major, proxy_minor = parse_api_version(proxy_version)
    return plugin_major == proxy_major and plugin_minor <= proxy_minor


def check_api_version(
    plugin: str, declared: object, proxy_version: str = PROXY_PLUGIN_API_VERSION
) -> None:
    """Refuse a plugin whose ``PLUGIN_API_VERSION`` is missing, malformed or incompatible."""
    if declared is None:
        raise PluginRefused(plugin, "it does not declare PLUGIN_API_VERSION")
    if not isinstance(declared, str):
        raise PluginRefused(plugin, f"PLUGIN_API_VERSION must be a string, got {declared!r}")
    try:
        compatible = is_api_compatible(declared, proxy_version)
    except ValueError as exc:
        raise PluginRefused(plugin, str(exc)) from None
    if not compatible:
        raise PluginRefused(
            plugin,
            f"it needs plugin API {declared}, but this proxy provides {proxy_version} "
            f"(compatible: {proxy_version.partition('.')[0]}.0 to {proxy_version})",
        )


# --- signatures --------------------------------------------------------------------------------


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


@dataclass(frozen=True, eq=False)
class VerifiedArtifact:
    """A plugin artifact's files as a signature check read and verified them.

    For a package directory (``package``), ``files`` maps each ``/``-separated path under it,
    as in the manifest, to its bytes; for a single-file module it holds that one file under its
    name. ``digest``: SHA-256 of the signed payload, which tells two versions apart."""

    path: Path
    package: bool
    files: Mapping[str, bytes]
    digest: bytes

    @property
    def root(self) -> Path:
        """The directory ``files`` are relative to."""
        return self.path if self.package else self.path.parent


def read_tree(directory: Path) -> dict[str, bytes]:
    """The files a directory's :func:`manifest` covers, read once: relative path → bytes.

    ``__pycache__`` directories and ``*.pyc`` files are left out (Python rewrites them). Links
    to files count as the file they point to; links to directories are refused, since their
    contents could change without changing the manifest. ValueError for what cannot be signed.
    """
    tree: dict[str, bytes] = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                raise ValueError(f"{os.path.join(root, d)} links to a directory")
        for name in files:
            full = Path(root) / name
            if name.endswith(".pyc"):
                continue
            rel = full.relative_to(directory).as_posix()
            if "\n" in rel:
                raise ValueError(f"{full!r} has a newline in its name")
            tree[rel] = full.read_bytes()
    return tree


def manifest_of(tree: Mapping[str, bytes]) -> bytes:
    """A header, then ``<sha256 hex>  <relative path>`` lines, sorted by path (``/``-separated,
    so the same on every machine)."""
    entries = sorted((rel, hashlib.sha256(data).hexdigest()) for rel, data in tree.items())
    return MANIFEST_HEADER + b"".join(f"{digest}  {rel}\n".encode() for rel, digest in entries)


def manifest(directory: Path) -> bytes:
    """The signed form of a directory: :func:`manifest_of` its :func:`read_tree`."""
    return manifest_of(read_tree(directory))


def _snapshot(path: Path) -> tuple[bytes, VerifiedArtifact]:
    """Read the artifact once: (what its signature covers, the files it was computed from)."""
    package = path.is_dir()
    if package:
        tree = read_tree(path)
        payload = manifest_of(tree)
    else:
        tree = {path.name: path.read_bytes()}
        payload = tree[path.name]
    return payload, VerifiedArtifact(path, package, tree, hashlib.sha256(payload).digest())


def signed_payload(path: Path) -> bytes:
    """What a signature covers: a file's bytes, or a directory's :func:`manifest`."""
    return _snapshot(path)[0]


def sign_artifact(path: Path, private_key: Ed25519PrivateKey) -> bytes:
    """The raw 64-byte ed25519 signature of a plugin file or directory."""
    return private_key.sign(signed_payload(path))


def write_signature(path: Path, private_key: Ed25519PrivateKey) -> Path:
    """Sign ``path`` and write the signature, base64, to ``<path>.sig``; return that path."""
    sig_path = signature_path(path)
    sig_path.write_bytes(base64.b64encode(sign_artifact(path, private_key)) + b"\n")
    return sig_path


def load_public_key(spec: str | bytes | os.PathLike[str] | Ed25519PublicKey) -> Ed25519PublicKey:
    """A trusted key from config: a PEM string, raw 32-byte key in base64, or a path to either.

    A path's file may also hold the raw 32 bytes. ValueError when it is none of these.
    """
    if isinstance(spec, Ed25519PublicKey):
        return spec
    if not isinstance(spec, os.PathLike):
        data = spec.encode() if isinstance(spec, str) else spec
        if data.lstrip().startswith(b"-----BEGIN") or _b64_key(data) is not None:
            return _key_from_bytes(data, source="configured key")
    # Otherwise it names a file (a 32-byte base64 key never looks like a path: it ends in =).
    path = Path(os.fsdecode(spec))
    try:
        contents = path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"trusted key {os.fsdecode(spec)!r} is not a PEM or base64 ed25519 key, and not a "
            f"readable file ({exc.strerror})"
        ) from None
    return _key_from_bytes(contents, source=str(path))


def _b64_key(data: bytes) -> bytes | None:
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _key_from_bytes(data: bytes, *, source: str) -> Ed25519PublicKey:
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{source}: not an ed25519 public key")
        return key
    raw = data if len(data) == 32 else _b64_key(data)
    if raw is None:
        raise ValueError(f"{source}: not a PEM, base64 or raw 32-byte ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _read_signature(plugin: str, sig_path: Path) -> bytes:
    try:
        data = sig_path.read_bytes()
    except FileNotFoundError:
        raise PluginRefused(plugin, f"signature file {sig_path} is missing") from None
    if len(data) == 64:
        return data
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise PluginRefused(
            plugin, f"signature file {sig_path} is not a 64-byte ed25519 signature (raw or base64)"
        )
    return raw


def verify_signature(
    plugin: str, path: Path, trusted_keys: Sequence[Ed25519PublicKey]
) -> VerifiedArtifact:
    """Refuse unless ``<path>.sig`` exists and one of ``trusted_keys`` verifies it; return the
    files as they were read for the check."""
    if not trusted_keys:
        raise PluginRefused(plugin, "signatures are required but no trusted keys are configured")
    signature = _read_signature(plugin, signature_path(path))
    try:
        payload, artifact = _snapshot(path)
    except (OSError, ValueError) as exc:
        raise PluginRefused(plugin, f"cannot compute what {path} signs: {exc}") from None
    for key in trusted_keys:
        try:
            key.verify(signature, payload)
        except InvalidSignature:
            continue
        return artifact
    raise PluginRefused(
        plugin,
        f"signature {signature_path(path)} does not verify with any of the "
        f"{len(trusted_keys)} trusted key(s): the plugin was modified or signed by another key",
    )


# --- all together ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyPolicy:
    """How strict to be. Built once from config (:meth:`from_config`) and passed down."""

    require_signature: bool = False
    trusted_keys: tuple[Ed25519PublicKey, ...] = ()
    check_permissions: bool = True

    @classmethod
    def from_config(
        cls,
        *,
        require_signature: bool = False,
        trusted_keys: Iterable[str | bytes | os.PathLike[str]] = (),
        check_permissions: bool = True,
    ) -> VerifyPolicy:
        return cls(
            require_signature=require_signature,
            trusted_keys=tuple(load_public_key(k) for k in trusted_keys),
            check_permissions=check_permissions,
        )


def verify_artifact(plugin: str, path: Path, policy: VerifyPolicy) -> VerifiedArtifact | None:
    """Everything that can be checked before loading: permissions, then the signature.

    With signatures optional, a ``.sig`` that is present is still checked when trusted keys are
    configured: a signature that fails means tampering, whatever the policy. Returns the
    verified files when a signature was checked (import from those), else None. The API
    version is checked after loading, with :func:`check_api_version`.
    """
    if policy.check_permissions:
        check_permissions(plugin, path)
    present = signature_path(path).exists()
    if policy.require_signature or (present and policy.trusted_keys):
        return verify_signature(plugin, path, policy.trusted_keys)
    return None
