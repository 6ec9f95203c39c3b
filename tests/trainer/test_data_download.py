"""Downloading CIFAR-10, without the network: file:// URLs to a tiny archive and a replaced opener."""

from __future__ import annotations

import hashlib
import socket
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from edgesmith.errors import DataError
from trainer.data import dataset, download, open_dataset


@pytest.fixture
def tiny_archive(tmp_path) -> Path:
    """A real .tar.gz in the binary layout: one 20-record batch and a 10-record test batch."""
    folder = tmp_path / "src" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, n in (("data_batch_1.bin", 20), ("test_batch.bin", 10)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        pixels = np.full((n, 3072), n, dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    return archive


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_then_reads_the_archive(tmp_path, tiny_archive, monkeypatch):
    monkeypatch.setattr(download, "CIFAR10_BINARY_URL", tiny_archive.as_uri())
    monkeypatch.setattr(download, "CIFAR10_BINARY_MD5", md5_of(tiny_archive))
    dest = tmp_path / "data" / "cifar"
    ds = open_dataset(dest, download=True, cache_dir=tmp_path / "cache")
    assert ds.format == "cifar10-binary" and len(ds.train) == 20 and len(ds.val) == 10
    assert (ds.val.images == 10).all()
    assert [p.name for p in dest.iterdir()] == ["cifar-10-binary.tar.gz"]  # no temp file left
    assert md5_of(dest / "cifar-10-binary.tar.gz") == md5_of(tiny_archive)
    # Found again without download=True.
    assert open_dataset(dest, cache_dir=tmp_path / "cache").content_hash == ds.content_hash


def test_download_to_an_archive_path(tmp_path, tiny_archive):
    target = download.download_cifar10(tmp_path / "x" / "mine.tgz", url=tiny_archive.as_uri(), md5=md5_of(tiny_archive))
    assert target == tmp_path / "x" / "mine.tgz" and target.read_bytes() == tiny_archive.read_bytes()


def test_checksum_mismatch_names_both_sums_and_removes_the_file(tmp_path, tiny_archive, monkeypatch):
    monkeypatch.setattr(download, "CIFAR10_BINARY_URL", tiny_archive.as_uri())  # md5 stays the real CIFAR one
    dest = tmp_path / "dl"
    with pytest.raises(DataError) as err:
        open_dataset(dest, download=True)
    msg = str(err.value)
    assert download.CIFAR10_BINARY_MD5 in msg and md5_of(tiny_archive) in msg and "expected" in msg
    assert list(dest.iterdir()) == []


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    def no_network(url):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(download, "_open_url", no_network)
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "dl", download=True)
    msg = str(err.value)
    assert msg.startswith(f"could not download CIFAR-10 from {download.CIFAR10_BINARY_URL}: ")
    assert "Temporary failure in name resolution" in msg
    assert "check your network or download it yourself and pass --data PATH" in msg
    assert list((tmp_path / "dl").iterdir()) == []


def test_missing_file_url_and_dropped_connection_are_download_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="could not download CIFAR-10 from file://"):
        download.download_cifar10(tmp_path / "a", url=(tmp_path / "absent.tar.gz").as_uri())

    class Dropping:
        def __init__(self):
            self.sent = False

        def read(self, n):
            if self.sent:
                raise ConnectionResetError(104, "Connection reset by peer")
            self.sent = True
            return b"x" * 100

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(download, "_open_url", lambda url: Dropping())
    with pytest.raises(DataError, match="could not download.*Connection reset by peer"):
        download.download_cifar10(tmp_path / "b")
    assert list((tmp_path / "b").iterdir()) == []  # the partial file is gone


def test_no_download_when_the_data_is_already_there(tmp_path, tiny_archive, monkeypatch):
    def must_not_download(dest):
        raise AssertionError("downloaded although CIFAR-10 was present")

    monkeypatch.setattr(dataset, "download_cifar10", must_not_download)
    (tmp_path / "have").mkdir()
    (tmp_path / "have" / "cifar-10-binary.tar.gz").write_bytes(tiny_archive.read_bytes())
    assert len(open_dataset(tmp_path / "have", download=True).train) == 20
