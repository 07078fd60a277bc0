"""Download: a real HTTP server on loopback, checksum and safety checks, atomic outs."""

import hashlib
import io
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flower_model.data.download import download_dataset, sha256_file
from flower_model.errors import DownloadError, OutputError, UnsafeArchiveError
from tests.conftest import make_config
from tests.helpers.disk import full_disk

ARCHIVE_PATH = "/flowers.tgz"


class ArchiveServer:
    """Serves one payload with Range support; can cut the first response off halfway."""

    def __init__(self, payload: bytes, cut_first: bool = False) -> None:
        self.payload = payload
        self.cut_first = cut_first
        self.range_headers: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                if self.path != ARCHIVE_PATH:
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                server.range_headers.append(requested)
                start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
                body = server.payload[start:]
                self.send_response(206 if requested else 200)
                self.send_header("Content-Length", str(len(body)))
                if requested:
                    total = len(server.payload)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.end_headers()
                if server.cut_first and len(server.range_headers) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops halfway
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{ARCHIVE_PATH}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ArchiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _config(*sources: tuple[str, str]):
    listed = [
        {"name": f"source{i}", "url": url, "sha256": sha} for i, (url, sha) in enumerate(sources)
    ]
    # Small chunks: the test archive is ~100 KB, and the cut must fall after written chunks.
    data = {"sources": listed, "http_retries": 3, "http_backoff_s": 0.01, "chunk_bytes": 4096}
    return make_config(data=data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_no_outs(root: Path) -> None:
    raw = root / "data" / "raw"
    assert not (raw / "flower_photos").exists()
    assert not (raw / "source.json").exists()
    assert not raw.exists() or not any(item.name.endswith(".tmp") for item in raw.iterdir())


def test_http_download_extracts_and_records_source(tmp_path, mini_tarball, mini_dataset):
    payload = mini_tarball.read_bytes()
    with ArchiveServer(payload) as server:
        config = _config((server.url, _sha(payload)))
        download_dataset(config.data, config.paths, tmp_path)
    extracted = tmp_path / "data" / "raw" / "flower_photos"
    classes = sorted(item.name for item in extracted.iterdir() if item.is_dir())
    assert classes == sorted(item.name for item in mini_dataset.iterdir() if item.is_dir())
    some_file = next((mini_dataset / classes[0]).iterdir())
    assert (extracted / classes[0] / some_file.name).read_bytes() == some_file.read_bytes()
    source = (tmp_path / "data" / "raw" / "source.json").read_text()
    assert server.url in source and _sha(payload) in source and "source0" in source


def test_checksum_mismatch_leaves_no_outs(tmp_path, mini_tarball):
    payload = mini_tarball.read_bytes()
    with ArchiveServer(payload) as server:
        config = _config((server.url, "0" * 64))
        with pytest.raises(DownloadError) as error:
            download_dataset(config.data, config.paths, tmp_path)
    assert "0" * 64 in str(error.value) and server.url in str(error.value)
    _assert_no_outs(tmp_path)
    assert not any((tmp_path / "data" / "cache").glob("*")), "a bad download must not be kept"


def test_connection_cut_halfway_is_resumed(tmp_path, mini_tarball):
    payload = mini_tarball.read_bytes()
    with ArchiveServer(payload, cut_first=True) as server:
        config = _config((server.url, _sha(payload)))
        download_dataset(config.data, config.paths, tmp_path)
    assert server.range_headers[0] is None
    resumed_from = int(server.range_headers[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from < len(payload), "the second request must resume, not restart"
    assert (tmp_path / "data" / "raw" / "flower_photos").is_dir()


def test_falls_back_to_the_next_source_and_names_failures(tmp_path, mini_tarball):
    payload = mini_tarball.read_bytes()
    config = _config(
        (str(tmp_path / "absent.tgz"), _sha(payload)), (mini_tarball.as_uri(), _sha(payload))
    )
    chosen = download_dataset(config.data, config.paths, tmp_path)
    assert chosen.name == "source1"
    assert (tmp_path / "data" / "raw" / "flower_photos").is_dir()


def test_all_sources_failing_names_each_one(tmp_path):
    config = _config(
        (str(tmp_path / "absent.tgz"), "1" * 64), ("http://127.0.0.1:9/x.tgz", "2" * 64)
    )
    with pytest.raises(DownloadError) as error:
        download_dataset(config.data, config.paths, tmp_path)
    message = str(error.value)
    assert "absent.tgz" in message and "127.0.0.1:9" in message and "fix:" in message
    _assert_no_outs(tmp_path)


def _archive(tmp_path: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    path = tmp_path / "evil.tgz"
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo("flower_photos")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for member in members:
            if member.isfile():
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
            else:
                tar.addfile(member)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("flower_photos/../../escaped.txt", tarfile.REGTYPE, ""),
        ("/tmp/absolute.txt", tarfile.REGTYPE, ""),
        ("flower_photos/daisy/link.jpg", tarfile.SYMTYPE, "../../../outside.jpg"),
        ("flower_photos/daisy/abs.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        ("flower_photos/daisy/hard.jpg", tarfile.LNKTYPE, "../outside.jpg"),
        ("flower_photos/fifo", tarfile.FIFOTYPE, ""),
    ],
)
def test_unsafe_archive_entries_are_refused(tmp_path, name, kind, link):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    archive = _archive(tmp_path, [member])
    config = _config((str(archive), sha256_file(archive)))
    with pytest.raises(UnsafeArchiveError) as error:
        download_dataset(config.data, config.paths, tmp_path)
    assert name in str(error.value)
    _assert_no_outs(tmp_path)
    assert not (tmp_path / "escaped.txt").exists()


def _cve_2025_4517_chain(tmp_path: Path, outside: Path) -> list[tarfile.TarInfo]:
    """The published PATH_MAX symlink chain: each link passes a check on its own text."""
    long_name = "d" * 247
    steps = "abcdefghijklmnop"
    members, path = [], "flower_photos"
    for step in steps:
        folder = tarfile.TarInfo(f"{path}/{long_name}")
        folder.type = tarfile.DIRTYPE
        link = tarfile.TarInfo(f"{path}/{step}")
        link.type, link.linkname = tarfile.SYMTYPE, long_name
        members += [folder, link]
        path = f"{path}/{long_name}"
    chain = "flower_photos/" + "/".join(steps)
    last = tarfile.TarInfo(chain)
    last.type, last.linkname = tarfile.SYMTYPE, "../" * len(steps)
    escape = tarfile.TarInfo("flower_photos/escape")
    depth = len(tmp_path.resolve().parts) + len(steps) + 4
    escape.type = tarfile.SYMTYPE
    escape.linkname = f"{'/'.join(steps)}/{'../' * depth}{str(outside.parent).lstrip('/')}"
    payload = tarfile.TarInfo(f"flower_photos/escape/{outside.name}")
    return [*members, last, escape, payload]


@pytest.mark.parametrize("case", ["cve_2025_4517", "up_is_dot_dot", "inner_symlink"])
def test_links_are_refused_and_nothing_is_written_outside(tmp_path, case):
    outside = tmp_path / "outside" / "pwned.txt"
    outside.parent.mkdir()
    if case == "cve_2025_4517":
        members = _cve_2025_4517_chain(tmp_path, outside)
    elif case == "up_is_dot_dot":
        up = tarfile.TarInfo("flower_photos/up")
        up.type, up.linkname = tarfile.SYMTYPE, ".."
        members = [up, tarfile.TarInfo("flower_photos/up/raw_escape.txt")]
    else:  # even a link that stays inside: the dataset has none, so none is accepted
        inner = tarfile.TarInfo("flower_photos/tulips/b.jpg")
        inner.type, inner.linkname = tarfile.SYMTYPE, "../daisy/a.jpg"
        members = [tarfile.TarInfo("flower_photos/daisy/a.jpg"), inner]
    archive = _archive(tmp_path, members)
    config = _config((str(archive), sha256_file(archive)))
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        download_dataset(config.data, config.paths, tmp_path)
    _assert_no_outs(tmp_path)
    assert not outside.exists()
    assert not (tmp_path / "data" / "raw_escape.txt").exists()


@pytest.mark.parametrize("kind", ["not_a_tar", "truncated"])
def test_unreadable_archive_with_matching_checksum_is_one_clear_error(tmp_path, mini_tarball, kind):
    archive = tmp_path / "flowers.tgz"
    data = mini_tarball.read_bytes()
    archive.write_bytes(b"<html>not an archive</html>" if kind == "not_a_tar" else data[:-2000])
    config = _config((str(archive), sha256_file(archive)))
    with pytest.raises(DownloadError, match="is not a readable tar archive.*download it again"):
        download_dataset(config.data, config.paths, tmp_path)
    _assert_no_outs(tmp_path)


def test_size_and_count_caps(tmp_path, mini_tarball):
    sha = sha256_file(mini_tarball)
    for cap, match in (
        ({"max_archive_members": 5}, "max_archive_members"),
        ({"max_extracted_bytes": 1000}, "max_extracted_bytes"),
    ):
        listed = [{"name": "mini", "url": str(mini_tarball), "sha256": sha}]
        config = make_config(data={"sources": listed, **cap})
        with pytest.raises(UnsafeArchiveError, match=match):
            download_dataset(config.data, config.paths, tmp_path)
        _assert_no_outs(tmp_path)


@pytest.mark.parametrize("folder_entry", [True, False], ids=["folder_entry", "implied_folder"])
def test_a_file_and_a_folder_of_one_name_is_named_as_such(tmp_path, folder_entry):
    clash = tarfile.TarInfo("flower_photos/daisy")  # a file...
    inside = tarfile.TarInfo("flower_photos/daisy/a.jpg")  # ...and a folder of the same name
    members = [clash, inside]
    if folder_entry:
        folder = tarfile.TarInfo("flower_photos/daisy")
        folder.type = tarfile.DIRTYPE
        members = [clash, folder]
    archive = _archive(tmp_path, members)
    config = _config((str(archive), sha256_file(archive)))
    with pytest.raises(UnsafeArchiveError) as error:
        download_dataset(config.data, config.paths, tmp_path)
    assert str(error.value) == (
        f"{archive} holds both a file and a folder named 'flower_photos/daisy'; no extraction "
        "can keep both: repack the archive or use another source"
    )
    _assert_no_outs(tmp_path)


def test_full_disk_while_extracting_names_the_output_not_the_archive(tmp_path, mini_tarball):
    root = tmp_path / "project"
    with full_disk(root / "data" / "raw") as raw:
        config = _config((str(mini_tarball), sha256_file(mini_tarball)))
        with pytest.raises(OutputError, match=f"^no space left on {raw / 'flower_photos'};"):
            download_dataset(config.data, config.paths, root)
        assert sorted(path.name for path in raw.iterdir()) == ["filler"]


def test_full_disk_during_an_http_download_is_one_line(tmp_path, mini_tarball):
    payload = mini_tarball.read_bytes()
    root = tmp_path / "project"
    with full_disk(root / "data" / "cache") as cache, ArchiveServer(payload) as server:
        config = _config((server.url, _sha(payload)))
        with pytest.raises(OutputError, match=f"^no space left on {cache}/.*part; free space"):
            download_dataset(config.data, config.paths, root)
    _assert_no_outs(root)


@pytest.mark.slow
def test_s3_source_is_fetched_and_cached_whole(tmp_path, mini_tarball, s3_server, monkeypatch):
    import fsspec

    endpoint, credentials, _ = s3_server
    for name, value in {**credentials, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    url = "s3://flower-model/archives/flowers.tgz"
    fsspec.filesystem("s3", skip_instance_cache=True).put(str(mini_tarball), url)
    config = _config((url, sha256_file(mini_tarball)))
    chosen = download_dataset(config.data, config.paths, tmp_path)
    assert chosen.url == url and (tmp_path / "data" / "raw" / "flower_photos").is_dir()
    cached = sorted(path.name for path in (tmp_path / "data" / "cache").iterdir())
    assert cached == [f"{sha256_file(mini_tarball)}.archive"], "one whole archive, no temp file"


def test_a_relative_source_is_the_projects_inside_a_dvc_experiment_workspace(
    tmp_path, mini_tarball, monkeypatch
):
    """Queued and temp experiments run in a copy under .dvc/tmp/exps/; a relative source
    (a mirror beside the clone) is resolved from the project DVC names in DVC_ROOT,
    where it used to be looked up beside the copy and never found."""
    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    workspace.mkdir(parents=True)
    shutil.copy(mini_tarball, tmp_path / "photos.tgz")
    config = _config(("../photos.tgz", _sha(mini_tarball.read_bytes())))
    monkeypatch.setenv("DVC_ROOT", str(project))
    download_dataset(config.data, config.paths, workspace)
    assert (workspace / "data" / "raw" / "flower_photos").is_dir()
    assert str(tmp_path) not in (workspace / "data" / "raw" / "source.json").read_text()
