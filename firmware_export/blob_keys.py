"""Ed25519 keys for signing weight blobs (used by :mod:`firmware_export.blob`, re-exported there)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesmith.errors import ExportError


def _private_key(key: Any):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        return Ed25519PrivateKey.from_private_bytes(bytes(key))
    raise ExportError(f"signing key must be an Ed25519 private key or 32 raw bytes, got "
                      f"{type(key).__name__}")


def _public_key(key: Any):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    raise ExportError(f"public key must be an Ed25519 public key or 32 raw bytes, got "
                      f"{type(key).__name__}")


def generate_keypair():
    """A new Ed25519 (private, public) key pair for signing weight blobs."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def save_private_key(key: Any, path: str | Path, *, raw: bool = False) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, or as its 32 raw bytes with ``raw``."""
    from cryptography.hazmat.primitives import serialization as ser
    key = _private_key(key)
    if raw:
        data = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    else:
        data = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    Path(path).write_bytes(data)


def save_public_key(key: Any, path: str | Path, *, raw: bool = False) -> None:
    """Write a public key as SubjectPublicKeyInfo PEM, or as its 32 raw bytes with ``raw``."""
    from cryptography.hazmat.primitives import serialization as ser
    key = _public_key(key)
    if raw:
        data = key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    else:
        data = key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    Path(path).write_bytes(data)


def _read_key_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ExportError(f"cannot read key file {path}: {e.strerror}") from None


def load_private_key(path: str | Path):
    """Read an Ed25519 private key from a PEM file or a 32-byte raw file."""
    from cryptography.hazmat.primitives import serialization as ser
    data = _read_key_file(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = ser.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise ExportError(f"{path}: not a readable unencrypted PEM private key ({e})") from None
        return _private_key(key) if _is_ed25519(key, private=True) else _bad_key(path, key)
    if len(data) == 32:
        return _private_key(data)
    raise ExportError(f"{path}: expected a PEM key or 32 raw bytes, got {len(data)} bytes")


def load_public_key(path: str | Path):
    """Read an Ed25519 public key from a PEM file or a 32-byte raw file."""
    from cryptography.hazmat.primitives import serialization as ser
    data = _read_key_file(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = ser.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise ExportError(f"{path}: not a readable PEM public key ({e})") from None
        return _public_key(key) if _is_ed25519(key, private=False) else _bad_key(path, key)
    if len(data) == 32:
        return _public_key(data)
    raise ExportError(f"{path}: expected a PEM key or 32 raw bytes, got {len(data)} bytes")


def _is_ed25519(key: Any, *, private: bool) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    cls = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    return isinstance(key, cls)


def _bad_key(path: str | Path, key: Any):
    raise ExportError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
