from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prism.hosting.verify import (
    PROXY_PLUGIN_API_VERSION,
    PluginRefused,
    VerifyPolicy,
    check_api_version,
    check_permissions,
    is_api_compatible,
    load_public_key,
    manifest,
    sign_artifact,
    signature_path,
    verify_artifact,
    verify_signature,
    write_signature,
)

NOBODY = 65534


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "plugins" / "kv_plugin.py"
    path.parent.mkdir(mode=0o755)
    path.write_text("PLUGIN_API_VERSION = '1.0'\n")
    path.chmod(0o644)
    return path


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "plugins" / "kv"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("PLUGIN_API_VERSION = '1.0'\n")
    (root / "pkg" / "ops.py").write_text("def get(): ...\n")
    (root / "plugin.toml").write_text("name = 'kv'\n")
    return root


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_plugin_refused_names_plugin_and_reason() -> None:
    error = PluginRefused("kv", "it is world-writable")

    assert (error.plugin, error.reason) == ("kv", "it is world-writable")
    assert str(error) == "plugin 'kv' refused: it is world-writable"


# --- permissions -------------------------------------------------------------------------------


def test_check_permissions_accepts_file_owned_by_us(plugin_file: Path) -> None:
    check_permissions("kv", plugin_file)


def test_check_permissions_refuses_world_writable_file(plugin_file: Path) -> None:
    plugin_file.chmod(0o666)

    with pytest.raises(PluginRefused, match=r"plugin .* is world-writable") as caught:
        check_permissions("kv", plugin_file)

    assert caught.value.plugin == "kv"
    assert str(plugin_file) in caught.value.reason


def test_check_permissions_refuses_world_writable_containing_directory(plugin_file: Path) -> None:
    plugin_file.parent.chmod(0o777)

    with pytest.raises(PluginRefused, match=r"containing directory .* is world-writable"):
        check_permissions("kv", plugin_file)


def test_check_permissions_refuses_file_owned_by_another_user(plugin_file: Path) -> None:
    os.chown(plugin_file, NOBODY, NOBODY)

    with pytest.raises(PluginRefused, match=f"owned by uid {NOBODY}"):
        check_permissions("kv", plugin_file)


def test_check_permissions_refuses_directory_owned_by_another_user(plugin_file: Path) -> None:
    os.chown(plugin_file.parent, NOBODY, NOBODY)

    with pytest.raises(PluginRefused, match="containing directory"):
        check_permissions("kv", plugin_file)


def test_check_permissions_refuses_world_writable_file_inside_plugin_directory(
    plugin_dir: Path,
) -> None:
    (plugin_dir / "pkg" / "__pycache__").mkdir()
    (plugin_dir / "pkg" / "__pycache__" / "ops.cpython-311.pyc").touch(mode=0o666)
    os.chmod(plugin_dir / "pkg" / "__pycache__" / "ops.cpython-311.pyc", 0o666)

    with pytest.raises(PluginRefused, match=r"ops\.cpython-311\.pyc is world-writable"):
        check_permissions("kv", plugin_dir)


def test_check_permissions_follows_link_to_the_real_file(plugin_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.py"
    link.symlink_to(plugin_file)
    plugin_file.chmod(0o666)

    with pytest.raises(PluginRefused, match="world-writable"):
        check_permissions("kv", link)


def test_check_permissions_refuses_missing_plugin(tmp_path: Path) -> None:
    with pytest.raises(PluginRefused, match="cannot be read"):
        check_permissions("kv", tmp_path / "absent.py")


# --- API version -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin", "proxy", "compatible"),
    [
        ("1.0", "1.0", True),
        ("1.0", "1.3", True),  # an older plugin on a newer proxy
        ("1.3", "1.3", True),
        ("1.4", "1.3", False),  # the plugin needs features this proxy lacks
        ("2.0", "1.3", False),
        ("0.9", "1.3", False),
        ("1.10", "1.9", False),  # numeric, not lexical
        ("1.9", "1.10", True),
    ],
)
def test_is_api_compatible_table(plugin: str, proxy: str, compatible: bool) -> None:
    assert is_api_compatible(plugin, proxy) is compatible


def test_check_api_version_accepts_proxy_version() -> None:
    check_api_version("kv", PROXY_PLUGIN_API_VERSION)


@pytest.mark.parametrize(
    ("declared", "complaint"),
    [
        (None, "does not declare PLUGIN_API_VERSION"),
        (1.0, "must be a string"),
        ("1", "not of the form MAJOR.MINOR"),
        ("1.x", "not of the form MAJOR.MINOR"),
        ("v1.0", "not of the form MAJOR.MINOR"),
        ("2.0", "needs plugin API 2.0, but this proxy provides 1.0"),
        ("1.1", "needs plugin API 1.1, but this proxy provides 1.0"),
    ],
)
def test_check_api_version_refuses(declared: object, complaint: str) -> None:
    with pytest.raises(PluginRefused, match="plugin 'kv' refused") as caught:
        check_api_version("kv", declared)

    assert complaint in caught.value.reason


# --- signatures --------------------------------------------------------------------------------


def test_verify_signature_accepts_base64_signature_file(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    sig = write_signature(plugin_file, key)

    assert sig == plugin_file.with_name("kv_plugin.py.sig")
    verify_signature("kv", plugin_file, [key.public_key()])


def test_verify_signature_accepts_raw_signature_file(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    raw = sign_artifact(plugin_file, key)
    signature_path(plugin_file).write_bytes(raw)

    assert len(raw) == 64
    verify_signature("kv", plugin_file, [key.public_key()])


def test_verify_signature_refuses_modified_plugin(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    write_signature(plugin_file, key)
    plugin_file.write_text("PLUGIN_API_VERSION = '1.0'\nimport os; os.system('evil')\n")

    with pytest.raises(PluginRefused, match="does not verify with any of the 1 trusted key"):
        verify_signature("kv", plugin_file, [key.public_key()])


def test_verify_signature_refuses_missing_signature(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(PluginRefused, match=r"signature file .*kv_plugin\.py\.sig is missing"):
        verify_signature("kv", plugin_file, [key.public_key()])


def test_verify_signature_refuses_untrusted_key(plugin_file: Path, key: Ed25519PrivateKey) -> None:
    write_signature(plugin_file, Ed25519PrivateKey.generate())

    with pytest.raises(PluginRefused, match="does not verify"):
        verify_signature("kv", plugin_file, [key.public_key()])


def test_verify_signature_accepts_any_trusted_key(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    write_signature(plugin_file, key)

    verify_signature(
        "kv", plugin_file, [Ed25519PrivateKey.generate().public_key(), key.public_key()]
    )


def test_verify_signature_refuses_garbage_signature_file(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    signature_path(plugin_file).write_text("not a signature\n")

    with pytest.raises(PluginRefused, match="not a 64-byte ed25519 signature"):
        verify_signature("kv", plugin_file, [key.public_key()])


def test_verify_signature_refuses_when_no_keys_are_trusted(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    write_signature(plugin_file, key)

    with pytest.raises(PluginRefused, match="no trusted keys are configured"):
        verify_signature("kv", plugin_file, [])


def test_manifest_lists_sorted_paths_with_sha256(plugin_dir: Path) -> None:
    lines = manifest(plugin_dir).decode().splitlines()

    assert lines[0] == "prism-plugin-manifest v1"
    assert [line.split("  ")[1] for line in lines[1:]] == [
        "pkg/__init__.py",
        "pkg/ops.py",
        "plugin.toml",
    ]
    assert all(len(line.split("  ")[0]) == 64 for line in lines[1:])


def test_manifest_ignores_bytecode(plugin_dir: Path) -> None:
    before = manifest(plugin_dir)
    (plugin_dir / "pkg" / "__pycache__").mkdir()
    (plugin_dir / "pkg" / "__pycache__" / "ops.cpython-311.pyc").write_bytes(b"\x00")
    (plugin_dir / "stray.pyc").write_bytes(b"\x00")

    assert manifest(plugin_dir) == before


def test_manifest_signature_verifies_directory(plugin_dir: Path, key: Ed25519PrivateKey) -> None:
    write_signature(plugin_dir, key)

    assert signature_path(plugin_dir) == plugin_dir.with_name("kv.sig")
    verify_signature("kv", plugin_dir, [key.public_key()])


@pytest.mark.parametrize("change", ["modify", "add", "remove", "rename"])
def test_manifest_signature_refuses_changed_directory(
    plugin_dir: Path, key: Ed25519PrivateKey, change: str
) -> None:
    write_signature(plugin_dir, key)
    ops = plugin_dir / "pkg" / "ops.py"
    if change == "modify":
        ops.write_text("def get(): steal()\n")
    elif change == "add":
        (plugin_dir / "pkg" / "sitecustomize.py").write_text("steal()\n")
    elif change == "remove":
        ops.unlink()
    else:
        ops.rename(plugin_dir / "pkg" / "ops2.py")

    with pytest.raises(PluginRefused, match="does not verify"):
        verify_signature("kv", plugin_dir, [key.public_key()])


def test_manifest_signature_refuses_directory_link(
    plugin_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (plugin_dir / "vendored").symlink_to(tmp_path / "elsewhere")
    signature_path(plugin_dir).write_bytes(bytes(64))

    with pytest.raises(PluginRefused, match="links to a directory"):
        verify_signature("kv", plugin_dir, [key.public_key()])


# --- trusted keys ------------------------------------------------------------------------------


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_load_public_key_accepts_every_config_form(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(_pem(key))
    (tmp_path / "key.b64").write_text(base64.b64encode(_raw(key)).decode() + "\n")
    (tmp_path / "key.raw").write_bytes(_raw(key))
    forms: list[str | bytes | Path] = [
        _pem(key).decode(),
        _pem(key),
        base64.b64encode(_raw(key)).decode(),
        str(tmp_path / "key.pem"),
        tmp_path / "key.b64",
        tmp_path / "key.raw",
    ]

    for form in forms:
        assert _raw_of(load_public_key(form)) == _raw(key), form


def _raw_of(public: object) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert isinstance(public, Ed25519PublicKey)
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize("spec", ["/nonexistent/key.pem", "c2hvcnQ=", "not a key"])
def test_load_public_key_rejects_what_is_not_a_key(spec: str) -> None:
    with pytest.raises(ValueError, match="not a PEM or base64 ed25519 key"):
        load_public_key(spec)


def test_load_public_key_rejects_other_key_types(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    with pytest.raises(ValueError, match="not an ed25519 public key"):
        load_public_key(pem)


# --- verify_artifact ---------------------------------------------------------------------------


def test_verify_artifact_requires_signature_when_configured(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    policy = VerifyPolicy.from_config(require_signature=True, trusted_keys=[_pem(key).decode()])

    with pytest.raises(PluginRefused, match="is missing"):
        verify_artifact("kv", plugin_file, policy)
    write_signature(plugin_file, key)
    verify_artifact("kv", plugin_file, policy)


def test_verify_artifact_without_requirement_still_refuses_bad_signature(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    policy = VerifyPolicy(trusted_keys=(key.public_key(),))
    verify_artifact("kv", plugin_file, policy)  # unsigned is fine when not required

    write_signature(plugin_file, Ed25519PrivateKey.generate())

    with pytest.raises(PluginRefused, match="does not verify"):
        verify_artifact("kv", plugin_file, policy)


def test_verify_artifact_checks_permissions_before_signature(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    write_signature(plugin_file, key)
    plugin_file.chmod(0o666)
    policy = VerifyPolicy(require_signature=True, trusted_keys=(key.public_key(),))

    with pytest.raises(PluginRefused, match="world-writable"):
        verify_artifact("kv", plugin_file, policy)


def test_verify_signature_returns_the_bytes_it_verified(
    plugin_dir: Path, key: Ed25519PrivateKey
) -> None:
    write_signature(plugin_dir, key)
    (plugin_dir / "pkg" / "__pycache__").mkdir()
    (plugin_dir / "pkg" / "__pycache__" / "ops.cpython-311.pyc").write_bytes(b"\x00")

    verified = verify_signature("kv", plugin_dir, [key.public_key()])
    (plugin_dir / "pkg" / "ops.py").write_text("def get(): steal()\n")  # too late to matter

    assert verified.package
    assert verified.root == plugin_dir
    assert dict(verified.files) == {
        "pkg/__init__.py": b"PLUGIN_API_VERSION = '1.0'\n",
        "pkg/ops.py": b"def get(): ...\n",
        "plugin.toml": b"name = 'kv'\n",
    }


def test_verify_artifact_returns_a_single_file_only_when_a_signature_was_checked(
    plugin_file: Path, key: Ed25519PrivateKey
) -> None:
    assert verify_artifact("kv", plugin_file, VerifyPolicy()) is None
    write_signature(plugin_file, key)

    verified = verify_artifact("kv", plugin_file, VerifyPolicy(trusted_keys=(key.public_key(),)))

    assert verified is not None
    assert not verified.package
    assert verified.root == plugin_file.parent
    assert dict(verified.files) == {"kv_plugin.py": b"PLUGIN_API_VERSION = '1.0'\n"}
