"""Fetching the CIFAR-10 archive, verified by md5 before it is put in place.

The archive is streamed to a temporary file next to its destination and
renamed only after the checksum matches, so an interrupted or tampered
download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from edgesmith.errors import DataError

from .archive import is_archive_name

CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_PYTHON_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
TIMEOUT_S = 60  # per blocking network operation, not for the whole download
_CHUNK = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def _open_url(url: str):
    """urllib's opener; a separate name so tests can replace it."""
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)


def _offline(url: str, exc: BaseException) -> DataError:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    return DataError(
        f"could not download CIFAR-10 from {url}: {reason}; check your network or download it yourself "
        "and pass --data PATH"
    )


def archive_destination(dest: str | os.PathLike) -> Path:
    """Where the archive goes: ``dest`` itself when it names a .tar.gz, else ``dest/cifar-10-binary.tar.gz``."""
    dest = Path(dest).expanduser()
    return dest if is_archive_name(dest) else dest / ARCHIVE_NAME


def download_cifar10(dest: str | os.PathLike, *, url: str | None = None, md5: str | None = None) -> Path:
    """Download the CIFAR-10 binary archive to ``dest`` (a folder or a .tar.gz path) and return its path.

    ``url``/``md5`` default to the module constants, read at call time so tests
    can point them at a local ``file://`` archive.
    """
    url = url or CIFAR10_BINARY_URL
    md5 = (md5 or CIFAR10_BINARY_MD5).lower()
    target = archive_destination(dest)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot create {target.parent} to download CIFAR-10 into: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # a transfer check against the published sum, not security
        with os.fdopen(fd, "wb") as out:
            try:
                response = _open_url(url)
            except _NETWORK_ERRORS as exc:
                raise _offline(url, exc) from None
            with response:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except _NETWORK_ERRORS as exc:
                        raise _offline(url, exc) from None
                    if not chunk:
                        break
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise DataError(
                            f"cannot write {tmp} while downloading CIFAR-10: {exc.strerror or exc}"
                        ) from None
        actual = digest.hexdigest()
        if actual != md5:
            raise DataError(
                f"CIFAR-10 download from {url} is corrupt: md5 {actual}, expected {md5}; the partial file was "
                "removed. Try again, or download it yourself and pass --data PATH"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
