"""Reading dataset files straight out of a .tar.gz without extracting to disk.

Member paths are checked before anything is read: an absolute path or one
with a ``..`` part is refused (a well-formed dataset archive has neither, and
refusing them keeps a hostile archive from naming files outside itself).
The archive is read in one sequential pass, because seeking backwards in a
gzip stream means decompressing it again from the start.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from edgesmith.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# What the tarfile/gzip stack raises on a truncated or corrupt archive.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)


def is_archive_name(path: str | Path) -> bool:
    """True when ``path`` ends in one of the supported archive suffixes."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def safe_member_name(archive: str, name: str) -> str:
    """Normalise a member name to a relative posix path; DataError for an unsafe one."""
    pure = PurePosixPath(name)
    windows_absolute = name.startswith("\\") or (len(name) > 1 and name[1] == ":")
    if pure.is_absolute() or windows_absolute or ".." in pure.parts or ".." in name.split("\\"):
        raise DataError(
            f"archive {archive} contains an unsafe member path {name!r} (absolute or with '..'); "
            "refusing to read it. Re-download the dataset from its official source"
        )
    return "/".join(p for p in pure.parts if p != ".")


def read_members(data: bytes, archive: str, want: Callable[[str], bool]) -> tuple[dict[str, bytes], list[str]]:
    """Read the regular files in tar ``data`` for which ``want(path)`` in one pass.

    Returns ({relative path: bytes} of the wanted files, every regular file's path).
    Every member name is checked with :func:`safe_member_name`, wanted or not.
    """
    found: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for member in tar:
                name = safe_member_name(archive, member.name)
                if member.isfile() and name:
                    names.append(name)
                if member.isfile() and name and want(name):
                    f = tar.extractfile(member)
                    found[name] = f.read() if f is not None else b""
    except _ARCHIVE_ERRORS as exc:
        raise DataError(
            f"cannot read archive {archive}: {exc}; the file is truncated or not a tar archive. "
            "Re-download it or pass the extracted folder instead"
        ) from None
    return found, names
