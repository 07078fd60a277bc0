"""Fetch the dataset archive from the first source that exists and verifies, then extract it safely.

Sources are tried in config order. Local paths, file:// and s3:// are read in place (s3 through
the s3fs filesystem that dvc-s3 brings); http(s) streams into a cache with retries, backoff and
Range resume. Nothing is extracted before its sha256 matches, and extraction goes to a temp folder
that is renamed into place only when complete.
"""

import hashlib
import logging
import os
import shutil
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from flower_model.config import ArchiveSource, DataConfig, PathsConfig
from flower_model.errors import DownloadError, UnsafeArchiveError
from flower_model.io_utils import (
    FILE_MODE,
    about_output,
    atomic_dir,
    atomic_path,
    output_error,
    write_json,
)

log = logging.getLogger(__name__)
HTTP_SCHEMES = ("http", "https")
HTTP_RANGE_NOT_SATISFIABLE = 416
HTTP_PARTIAL_CONTENT = 206
HTTP_TOO_MANY_REQUESTS = 429
HTTP_SERVER_ERROR = 500
SOURCE_FILE = "source.json"


class _RetryableError(Exception):
    """A transient HTTP failure: worth another attempt."""


DVC_ROOT_ENV = "DVC_ROOT"  # set by DVC for every stage it runs: the project's root


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _http_attempt(url: str, part: Path, data: DataConfig) -> None:
    import requests

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, stream=True, timeout=data.http_timeout_s, headers=headers) as reply:
            if reply.status_code == HTTP_RANGE_NOT_SATISFIABLE and have:
                return  # the partial file already holds every byte; the checksum decides
            status = reply.status_code
            if status == HTTP_TOO_MANY_REQUESTS or status >= HTTP_SERVER_ERROR:
                raise _RetryableError(f"HTTP {status}")
            reply.raise_for_status()
            resumed = have and reply.status_code == HTTP_PARTIAL_CONTENT
            if not resumed:
                have = 0  # the server ignored Range: start over
            length = reply.headers.get("Content-Length")
            expected = have + int(length) if length is not None else None
            written = have
            with (
                part.open("ab" if resumed else "wb") as handle,
                tqdm(  # on a terminal only (disable=None)
                    total=expected,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=part.name,
                    disable=None,
                ) as progress,
            ):
                for block in reply.iter_content(chunk_size=data.chunk_bytes):
                    handle.write(block)
                    written += len(block)
                    progress.update(len(block))
            if expected is not None and written < expected:
                raise _RetryableError(f"connection closed after {written} of {expected} bytes")
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _RetryableError(str(error)) from error
    except requests.exceptions.ChunkedEncodingError as error:
        raise _RetryableError(f"connection broken: {error}") from error


def download_http(url: str, target: Path, data: DataConfig) -> Path:
    """Stream `url` to `target`, resuming `target`.part across attempts; return `target`.

    Own code, kept on purpose: fsspec's HTTP filesystem (used here for s3) has no retries and no
    resume of a partial download into a file (its Range reads serve random access); pooch retries
    but restarts from byte 0 and is not a dependency; urllib3's Retry covers connecting and 5xx
    replies but not a connection cut mid-body, the case Range resume exists for."""
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    wait = data.http_backoff_s
    for attempt in range(1, data.http_retries + 1):
        try:
            _http_attempt(url, part, data)
            part.replace(target)
            return target
        except _RetryableError as error:
            log.warning(
                "download attempt %d/%d of %s failed: %s", attempt, data.http_retries, url, error
            )
            if attempt == data.http_retries:
                raise DownloadError(f"{url}: gave up after {attempt} attempts ({error})") from None
            time.sleep(wait)
            wait *= 2
        except requests.HTTPError as error:
            raise DownloadError(f"{url}: {error}") from None
        except OSError as error:  # last: requests' own errors are OSErrors too
            # Writing failed (disk full...): the .part stays, and the next run resumes it.
            if not about_output(error, part):
                raise
            raise output_error(part, error) from None
    raise AssertionError("unreachable: the loop returns or raises")


def _fetch(source: ArchiveSource, data: DataConfig, paths: PathsConfig, root: Path) -> Path:
    """Return a local file holding the source's archive (not yet verified)."""
    parsed = urlparse(source.url)
    if parsed.scheme in HTTP_SCHEMES:
        cached = root / paths.download_cache_dir / f"{source.sha256}.archive"
        if cached.is_file():
            return cached
        return download_http(source.url, cached, data)
    if parsed.scheme == "s3":
        import fsspec

        cached = root / paths.download_cache_dir / f"{source.sha256}.archive"
        if not cached.is_file():
            with atomic_path(cached) as partial:  # a cut transfer leaves no "cached" archive
                fsspec.filesystem("s3").get(source.url, str(partial))
        return cached
    if parsed.scheme == "file":
        local = Path(unquote(parsed.path))
    elif parsed.scheme:
        raise DownloadError(
            f"{source.url}: unsupported scheme {parsed.scheme!r} (use a path, file, http(s) or s3)"
        )
    else:
        local = Path(source.url)
    # A relative path is the project's: DVC's queued and temp experiments run in a copy under
    # .dvc/tmp/exps/ and name the project they came from in DVC_ROOT (DVC's public env var).
    local = local if local.is_absolute() else Path(os.environ.get(DVC_ROOT_ENV, root)) / local
    if not local.is_file():
        raise DownloadError(f"{local} does not exist")
    return local


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse every entry that could write outside the extraction folder.

    Links are refused outright rather than resolved: tf_flowers has none, and a check on link
    text is what CVE-2025-4517-style chains (and `up -> ..` entries) slip past. With only plain
    files and folders extracted, no path can be redirected, on any Python patch level.
    """
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise UnsafeArchiveError(f"archive entry {member.name!r} escapes the extraction folder")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(
            f"archive entry {member.name!r} is a link (to {member.linkname!r}); the dataset has "
            "no links, so archives with links are refused: repack it without them"
        )
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"archive entry {member.name!r} is a device, FIFO or other special file"
        )


def _check_names(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse an archive that holds a file and a folder under one name: no extraction keeps both."""
    names = [PurePosixPath(member.name) for member in members]
    files = {name for name, member in zip(names, members) if member.isfile()}
    folders = {name for name, member in zip(names, members) if member.isdir()}
    folders |= {parent for name in names for parent in name.parents}
    clashes = sorted(files & folders)
    if clashes:
        raise UnsafeArchiveError(
            f"{archive} holds both a file and a folder named {clashes[0].as_posix()!r}; "
            "no extraction can keep both: repack the archive or use another source"
        )


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path) -> None:
    target = destination.joinpath(*PurePosixPath(member.name).parts)
    if not target.resolve().is_relative_to(destination):
        raise UnsafeArchiveError(f"archive entry {member.name!r} escapes the extraction folder")
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeArchiveError(f"archive entry {member.name!r} has no data")
    # O_NOFOLLOW: even a link planted by something else is never written through.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with source, os.fdopen(os.open(target, flags, FILE_MODE), "wb") as handle:
        shutil.copyfileobj(source, handle)


def safe_extract(archive: Path, destination: Path, data: DataConfig) -> None:
    """Extract `archive` into the empty `destination` after checking each entry and the totals.

    Only regular files and folders are written, each by our own code, with its real path checked
    to lie inside `destination`; the stdlib extractor and its filters are not relied on.
    """
    destination = destination.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if len(members) > data.max_archive_members:
                raise UnsafeArchiveError(
                    f"{archive} has {len(members)} entries, more than data.max_archive_members="
                    f"{data.max_archive_members}; raise the cap if the archive is trusted"
                )
            total = sum(member.size for member in members)
            if total > data.max_extracted_bytes:
                raise UnsafeArchiveError(
                    f"{archive} unpacks to {total} bytes, more than data.max_extracted_bytes="
                    f"{data.max_extracted_bytes}; raise the cap if the archive is trusted"
                )
            for member in members:
                _check_member(member)
            _check_names(archive, members)
            for member in members:
                _extract_member(tar, member, destination)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        if isinstance(error, UnsafeArchiveError):
            raise
        if isinstance(error, OSError) and about_output(error, destination):
            raise  # writing failed (disk full...), not reading: atomic_dir names the output
        reason = " ".join(str(error).split())  # tarfile's message spans lines; keep one
        raise DownloadError(
            f"{archive} is not a readable tar archive ({type(error).__name__}: {reason}); "
            "delete it and download it again"
        ) from None


def download_dataset(data: DataConfig, paths: PathsConfig, root: Path) -> ArchiveSource:
    """Fetch, verify and extract the first usable source into paths.raw_dir; record which one."""
    raw_dir = root / paths.raw_dir
    failures = []
    for source in data.sources:
        try:
            archive = _fetch(source, data, paths, root)
        except DownloadError as error:
            failures.append(f"{source.name} ({source.url}): {error}")
            log.warning("source %s unusable: %s", source.name, error)
            continue
        actual = sha256_file(archive)
        if actual != source.sha256:
            failures.append(
                f"{source.name} ({source.url}): sha256 {actual} != expected {source.sha256}"
            )
            log.warning("source %s: checksum mismatch, skipping", source.name)
            if archive.is_relative_to(root / paths.download_cache_dir):
                archive.unlink()  # a bad download must not be reused
            continue
        print(f"using source {source.name}: {source.url} (sha256 verified)", flush=True)
        with atomic_dir(raw_dir / data.name) as staging:
            safe_extract(archive, staging, data)
            extracted = staging / data.name
            if not extracted.is_dir():
                raise UnsafeArchiveError(f"{source.url} has no top folder {data.name!r}")
            for item in extracted.iterdir():
                item.rename(staging / item.name)
            extracted.rmdir()
        write_json(raw_dir / SOURCE_FILE, source.model_dump(mode="json"))
        return source
    tried = "\n  ".join(failures)
    raise DownloadError(
        f"no dataset source could be used; tried:\n  {tried}\n"
        "fix: put the archive at the first source's path, restore network access, or add a source "
        "with the right sha256 under data.sources"
    )
