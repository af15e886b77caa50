"""Fetching PyPI archives into the cache: checksums, offline errors, locking, atomic extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from lococo import _fetch
from lococo._fetch import cache_dir, extract_member, extract_members, fetch_package_archive, sha256_file
from lococo.errors import FetchError

FILENAME = "fakepkg-1.0-py3-none-any.whl"


def _make_wheel(path: Path, members: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return sha256_file(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCOCO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOCOCO_OFFLINE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """Replace pip with a copy of a tiny wheel; records the calls."""
    source = tmp_path / "src" / FILENAME
    source.parent.mkdir()
    sha = _make_wheel(source, {"fakepkg/a.txt": "alpha", "fakepkg/b.txt": "beta", "fakepkg/c.bin": "x"})
    calls: list[str] = []

    def download(name, version, filename, dest):
        calls.append(filename)
        time.sleep(0.2)  # widen the race window for the concurrency test
        (Path(dest) / filename).write_bytes(source.read_bytes())

    monkeypatch.setattr(_fetch, "_pip_download", download)
    return sha, calls


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCOCO_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LOCOCO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lococo"


def test_fetch_then_reuse(cache, fake_pip):
    sha, calls = fake_pip
    path = fetch_package_archive("fakepkg", "1.0", FILENAME, sha)
    assert path == cache / "downloads" / FILENAME
    assert sha256_file(path) == sha
    assert fetch_package_archive("fakepkg", "1.0", FILENAME, sha) == path
    assert calls == [FILENAME]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_corrupted_file_is_fetched_again(cache, fake_pip, caplog):
    sha, calls = fake_pip
    target = cache / "downloads" / FILENAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert sha256_file(fetch_package_archive("fakepkg", "1.0", FILENAME, sha)) == sha
    assert calls == [FILENAME]
    assert "wrong sha256" in caplog.text


def test_wrong_checksum_from_pip(cache, fake_pip):
    with pytest.raises(FetchError, match="expected 00+"):
        fetch_package_archive("fakepkg", "1.0", FILENAME, "0" * 64)
    assert not (cache / "downloads" / FILENAME).exists()


def test_offline_raises_naming_the_file(cache, fake_pip, monkeypatch):
    sha, calls = fake_pip
    monkeypatch.setenv("LOCOCO_OFFLINE", "1")
    with pytest.raises(FetchError) as info:
        fetch_package_archive("fakepkg", "1.0", FILENAME, sha)
    message = str(info.value)
    assert FILENAME in message and sha in message and str(cache / "downloads" / FILENAME) in message
    assert calls == []


def test_pip_failure_message(cache, monkeypatch):
    def fail(name, version, filename, dest):
        raise FetchError(f"pip could not download {name}=={version} (network unreachable)")

    monkeypatch.setattr(_fetch, "_pip_download", fail)
    with pytest.raises(FetchError, match="network unreachable.*put it at"):
        fetch_package_archive("fakepkg", "1.0", FILENAME, "a" * 64)


def test_concurrent_fetches_download_once(cache, fake_pip):
    sha, calls = fake_pip
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(fetch_package_archive("fakepkg", "1.0", FILENAME, sha))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert sha256_file(results[0]) == sha
    assert calls == [FILENAME]


def test_extract_members_from_wheel(tmp_path):
    archive = tmp_path / FILENAME
    _make_wheel(
        archive, {"pkg/a.txt": "alpha", "pkg/b.txt": "beta", "pkg/c_f.txt": "dup", "other/d.txt": "no"}
    )
    dest = tmp_path / "out"
    files = extract_members(archive, dest, ["pkg/*.txt"], exclude=["*_f.txt"])
    assert [f.name for f in files] == ["a.txt", "b.txt"]
    assert (dest / "a.txt").read_text() == "alpha"
    # Already extracted: reused as is.
    assert extract_members(archive, dest, ["pkg/*.txt"]) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME, "out", "out.lock"]


def test_extract_members_from_tar_gz(tmp_path):
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, text in {"pkg-1.0/texts/x_gut.txt": "x", "pkg-1.0/texts/x_gut_f.txt": "dup"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text.encode()))
    files = extract_members(archive, tmp_path / "out", ["pkg-1.0/texts/*_gut.txt"])
    assert [f.name for f in files] == ["x_gut.txt"]


def test_extraction_is_atomic_on_failure(tmp_path):
    archive = tmp_path / FILENAME
    _make_wheel(archive, {"pkg/a.txt": "alpha"})
    dest = tmp_path / "out"
    with pytest.raises(FetchError, match="no member matching"):
        extract_members(archive, dest, ["nothing/*"])
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_extract_member_verifies_checksum(tmp_path):
    archive = tmp_path / FILENAME
    _make_wheel(archive, {"pkg/model.bin": "weights"})
    good = hashlib.sha256(b"weights").hexdigest()
    dest = tmp_path / "m" / "model.bin"
    dest.parent.mkdir()
    with pytest.raises(FetchError, match="expected"):
        extract_member(archive, "pkg/model.bin", dest, "1" * 64)
    assert not dest.exists()
    assert extract_member(archive, "pkg/model.bin", dest, good).read_text() == "weights"
