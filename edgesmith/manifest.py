"""The run directory's ``manifest.json``: config, package versions, artifacts (sha256) and metrics.

Every stage reads the manifest, adds what it produced and writes it back
atomically, so a run directory always describes itself: what was trained on
what, with which versions, and which files came out with which hashes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import edgesmith
from edgesmith.errors import EdgeSmithError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "edgesmith-run"
MANIFEST_VERSION = 1
_TRACKED_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "safetensors", "pillow")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python, EdgeSmith and the packages that decide numerical results."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "edgesmith": edgesmith.__version__}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def new_manifest(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created": now_iso(),
        "updated": now_iso(),
        "config": config,
        "packages": package_versions(),
        "artifacts": {},
        "metrics": {},
        "lineage": [],
    }


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/manifest.json``; a missing or malformed file is a clear error."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        raise EdgeSmithError(f"{run_dir} is not an EdgeSmith run directory: {MANIFEST_FILE} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgeSmithError(f"{path} is not valid JSON ({e}); restore it or re-run the stage that wrote it") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise EdgeSmithError(f"{path} is not an EdgeSmith manifest (format {data.get('format')!r})")
    return data


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically (temp file + rename)."""
    path = Path(run_dir) / MANIFEST_FILE
    manifest["updated"] = now_iso()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record_artifact(manifest: dict[str, Any], run_dir: str | Path, relpath: str, **info: Any) -> dict[str, Any]:
    """Add (or replace) an artifact entry with its sha256 and size, plus any stage-specific info."""
    path = Path(run_dir) / relpath
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, **info}
    manifest["artifacts"][relpath] = entry
    return entry
