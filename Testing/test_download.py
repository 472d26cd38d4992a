"""Downloads against a real HTTP(S) server on 127.0.0.1 that drops, corrupts, refuses and stalls."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mednextv2.bundle import load_bundle
from mednextv2.errors import InputError, ResourceError
from mednextv2.store.cache import ModelCache
from mednextv2.store.catalog import CatalogEntry, download_model
from mednextv2.store.download import ChecksumError, DownloadError, DownloadSettings, download_verified, fetch_bytes
from http_test_server import FileServer, Proxy, catalog_entry, catalog_json, self_signed_tls, tiny_bundle_zip

FAST = DownloadSettings(connect_timeout=2.0, read_timeout=2.0, retries=2, backoff=0.05, chunk_size=8192)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def payload() -> bytes:
    return os.urandom(300_000)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_resume_after_connection_drop(tmp_path, payload):
    with FileServer() as server:
        server.add("/m.bin", payload, drop_after=120_000, drops=1)
        seen = []
        out = download_verified([server.url("/m.bin")], tmp_path / "m.bin.part", sha(payload), len(payload),
                                settings=FAST, progress=lambda stage, f, *a, **k: seen.append((stage, f)))
        log = server.requests_for("/m.bin")
        sent = server.routes["/m.bin"].bytes_sent
    assert out == tmp_path / "m.bin" and out.read_bytes() == payload
    assert not (tmp_path / "m.bin.part").exists()
    assert len(log) == 2 and "Range" not in log[0].headers
    # Continued where the written part ended (bytes still in the client's buffer are lost), not restarted.
    start = int(re.fullmatch(r"bytes=(\d+)-", log[1].headers["Range"]).group(1))
    assert 120_000 - FAST.chunk_size <= start <= 120_000
    assert sent == 120_000 + len(payload) - start
    assert seen[-1] == ("verify", 1.0) and any(s == "download" for s, _ in seen)


def test_resume_of_a_part_left_by_a_killed_process(tmp_path, payload):
    (tmp_path / "m.bin.part").write_bytes(payload[:77_777])
    with FileServer() as server:
        server.add("/m.bin", payload)
        out = download_verified([server.url("/m.bin")], tmp_path / "m.bin.part", sha(payload), len(payload), settings=FAST)
        assert [r.headers.get("Range") for r in server.requests_for("/m.bin")] == ["bytes=77777-"]
        assert server.routes["/m.bin"].bytes_sent == len(payload) - 77_777
    assert out.read_bytes() == payload


def test_server_without_range_support_starts_over(tmp_path, payload):
    (tmp_path / "m.bin.part").write_bytes(payload[:50_000])
    with FileServer() as server:
        server.add("/m.bin", payload, ranges=False)
        out = download_verified([server.url("/m.bin")], tmp_path / "m.bin.part", sha(payload), len(payload), settings=FAST)
    assert out.read_bytes() == payload


def test_resumed_part_from_another_version_is_refetched_cleanly(tmp_path, payload):
    (tmp_path / "m.bin.part").write_bytes(os.urandom(100_000))  # stale bytes of a different file
    with FileServer() as server:
        server.add("/m.bin", payload)
        out = download_verified([server.url("/m.bin")], tmp_path / "m.bin.part", sha(payload), len(payload), settings=FAST)
        ranges = [r.headers.get("Range") for r in server.requests_for("/m.bin")]
    assert ranges == ["bytes=100000-", None]
    assert out.read_bytes() == payload


def test_wrong_bytes_leave_nothing_in_the_cache(tmp_path, payload):
    home = tmp_path / "home"
    cache = ModelCache.open(home)
    data = tiny_bundle_zip(tmp_path / "tiny.zip")
    with FileServer() as server:
        server.add("/tiny.zip", data, corrupt=True)
        entry = CatalogEntry.from_dict(catalog_entry("tiny-ct", data, [server.url("/tiny.zip")]), "test")
        with pytest.raises(ChecksumError, match="checksum mismatch.*expected SHA-256 .*deleted"):
            download_model(entry, cache, settings=FAST)
    assert not cache.is_installed("tiny-ct")
    assert leftovers(home / "models") == [] and leftovers(home / "downloads") == [] and leftovers(home / "tmp") == []


def test_a_corrupt_mirror_falls_back_to_the_next(tmp_path, payload):
    with FileServer() as server:
        server.add("/bad.bin", payload, corrupt=True)
        server.add("/good.bin", payload)
        out = download_verified([server.url("/bad.bin"), server.url("/good.bin")], tmp_path / "m.bin.part",
                                sha(payload), len(payload), settings=FAST)
    assert out.read_bytes() == payload and leftovers(tmp_path) == ["m.bin"]


def test_more_bytes_than_the_catalog_says_is_refused(tmp_path, payload):
    with FileServer() as server:
        server.add("/m.bin", payload)
        with pytest.raises(ChecksumError, match="catalog says 1000"):
            download_verified([server.url("/m.bin")], tmp_path / "m.bin.part", sha(payload[:1000]), 1000, settings=FAST)
    assert leftovers(tmp_path) == []


def test_http_404_names_the_url_and_a_mirror_is_tried(tmp_path, payload):
    with FileServer() as server:
        server.add("/good.bin", payload)
        missing = server.url("/gone.bin")
        with pytest.raises(DownloadError, match=r"HTTP 404.*gone\.bin.*catalog may be out of date"):
            download_verified([missing], tmp_path / "a.bin.part", sha(payload), len(payload), settings=FAST)
        out = download_verified([missing, server.url("/good.bin")], tmp_path / "b.bin.part", sha(payload),
                                len(payload), settings=FAST)
        assert len(server.requests_for("/gone.bin")) == 2  # 404 is not retried
    assert out.read_bytes() == payload


def test_server_errors_are_retried_then_reported(tmp_path, payload):
    with FileServer() as server:
        server.add("/busy.bin", payload, status=503)
        with pytest.raises(DownloadError, match=r"HTTP 503.*gave up after 3 tries"):
            download_verified([server.url("/busy.bin")], tmp_path / "m.bin.part", sha(payload), len(payload), settings=FAST)
        assert len(server.requests_for("/busy.bin")) == 3


def test_small_files_are_retried_like_downloads(payload):
    # fetch_bytes (catalogs) shares the download's retry loop: dropped links are retried, a busy
    # server is given up on after the same number of tries, with the same message.
    with FileServer() as server:
        server.add("/flaky.json", payload, drop_after=50_000, drops=2)
        server.add("/busy.json", payload, status=503)
        assert fetch_bytes(server.url("/flaky.json"), len(payload), settings=FAST) == payload
        assert len(server.requests_for("/flaky.json")) == 3
        with pytest.raises(DownloadError, match=r"HTTP 503.*gave up after 3 tries"):
            fetch_bytes(server.url("/busy.json"), len(payload), settings=FAST)
        assert len(server.requests_for("/busy.json")) == 3


def test_slow_server_hits_the_read_timeout(tmp_path, payload):
    settings = DownloadSettings(connect_timeout=2.0, read_timeout=0.3, retries=1, backoff=0.01)
    with FileServer() as server:
        server.add("/slow.bin", payload, header_delay=1.0)
        with pytest.raises(DownloadError, match=r"stopped sending data for 0.3 s.*gave up after 2 tries"):
            download_verified([server.url("/slow.bin")], tmp_path / "m.bin.part", sha(payload), len(payload), settings=settings)


def test_slow_but_steady_server_completes(tmp_path, payload):
    with FileServer() as server:
        server.add("/slow.bin", payload, delay=0.01)
        out = download_verified([server.url("/slow.bin")], tmp_path / "m.bin.part", sha(payload), len(payload), settings=FAST)
    assert out.read_bytes() == payload


def _download_in_thread(*args, **kwargs):
    """download_verified in a thread, so that a test can watch it (and fail, not hang, if it never ends)."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["path"] = download_verified(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_dripping_server_is_given_up_and_the_part_resumes(tmp_path, payload):
    # A byte every 50 ms never trips the read timeout; only the average rate shows it.
    settings = DownloadSettings(connect_timeout=2.0, read_timeout=2.0, retries=2, backoff=0.05,
                                min_rate=1024, rate_window=1.0, flush_every=0.2)
    part = tmp_path / "m.bin.part"
    with FileServer() as server:
        server.add("/m.bin", payload, piece=1, delay=0.05)
        thread, outcome = _download_in_thread([server.url("/m.bin")], part, sha(payload), len(payload),
                                              settings=settings)
        thread.join(timeout=15)
        assert not thread.is_alive(), "the dripping download was not given up"
        error = outcome["error"]
        assert isinstance(error, DownloadError) and not isinstance(error, ChecksumError)
        assert re.search(r"download from 127\.0\.0\.1:\d+ is too slow: \d+ B/s over the last 1 s, below the minimum "
                         r"of 1\.0 KB/s\. The \d+ B received so far are kept in .*m\.bin\.part: run the download again "
                         "to resume it", str(error)), error
        kept = part.read_bytes()
        assert 5 <= len(kept) < 200 and kept == payload[:len(kept)]
        server.add("/m.bin", payload)  # the link recovers: the next run resumes where the drip stopped
        out = download_verified([server.url("/m.bin")], part, sha(payload), len(payload), settings=settings)
        assert server.requests_for("/m.bin")[-1].headers.get("Range") == f"bytes={len(kept)}-"
    assert out.read_bytes() == payload and not part.exists()


def test_the_part_file_is_flushed_while_the_download_runs(tmp_path, payload):
    # A process killed mid-download leaves what reached the disk; a slow link must not leave
    # everything in Python's write buffer.
    settings = DownloadSettings(connect_timeout=2.0, read_timeout=2.0, min_rate=1, flush_every=0.2)
    data = payload[:20_000]
    part = tmp_path / "m.bin.part"
    with FileServer() as server:
        route = server.add("/m.bin", data, piece=1, delay=0.02)
        thread, outcome = _download_in_thread([server.url("/m.bin")], part, sha(data), len(data), settings=settings)
        time.sleep(1.5)
        on_disk = part.read_bytes() if part.exists() else b""
        assert thread.is_alive() and 10 <= len(on_disk) < 1000 and on_disk == data[:len(on_disk)]
        route.piece, route.delay = 4096, 0.0
        thread.join(timeout=30)
    assert outcome["path"].read_bytes() == data


def test_offline_host_gives_a_clear_message(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"connection to 127.0.0.1:{port} failed.*gave up"):
        download_verified([f"http://127.0.0.1:{port}/m.bin"], tmp_path / "m.bin.part", "0" * 64, 10, settings=FAST)


def test_unresolvable_host_says_offline_and_suggests_import(tmp_path):
    # .invalid never resolves (RFC 6761), like any host when the computer is offline
    with pytest.raises(DownloadError, match=r"cannot resolve model-host\.invalid.*offline.*mednextv2 models import"):
        download_verified(["http://model-host.invalid/m.zip"], tmp_path / "m.bin.part", "0" * 64, 10, settings=FAST)


def test_only_http_urls_and_size_limits(tmp_path):
    for url in ("file:///etc/passwd", "ftp://example.org/m.zip", "/local/path.zip"):
        with pytest.raises(InputError, match="only http:// and https://"):
            download_verified([url], tmp_path / "m.part", "0" * 64, 10, settings=FAST)
    with pytest.raises(InputError, match="refusing to download"):
        download_verified(["https://example.org/m.zip"], tmp_path / "m.part", "0" * 64, 10 ** 9,
                          settings=DownloadSettings(max_bytes=10 ** 6))


def test_disk_full_is_reported_and_keeps_the_part(tmp_path, payload, monkeypatch):
    import collections

    import mednextv2.disk as disk_module

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_module.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(ResourceError, match="not enough disk space.*MEDNEXTV2_HOME"):
        download_verified(["http://127.0.0.1:9/m.bin"], tmp_path / "m.bin.part", sha(payload), len(payload), settings=FAST)
    monkeypatch.undo()
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is needed to simulate a full disk")
    (tmp_path / "full.bin.part").symlink_to("/dev/full")  # every write fails with ENOSPC
    with FileServer() as server:
        server.add("/m.bin", payload)
        with pytest.raises(ResourceError, match="disk full while writing .*resumes where it stopped"):
            download_verified([server.url("/m.bin")], tmp_path / "full.bin.part", sha(payload), len(payload), settings=FAST)


def test_http_proxy_is_honoured_and_no_proxy_bypasses_it(tmp_path, payload, monkeypatch):
    with FileServer() as server, Proxy() as proxy:
        server.add("/m.bin", payload)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        out = download_verified([server.url("/m.bin")], tmp_path / "a.bin.part", sha(payload), len(payload), settings=FAST)
        assert proxy.seen == [f"GET {server.url('/m.bin')}"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        download_verified([server.url("/m.bin")], tmp_path / "b.bin.part", sha(payload), len(payload), settings=FAST)
        assert len(proxy.seen) == 1 and len(server.requests_for("/m.bin")) == 2
    assert out.read_bytes() == payload


def test_https_through_proxy_with_a_custom_ca_bundle(tmp_path, payload, monkeypatch):
    tls, cert = self_signed_tls(tmp_path)
    with FileServer(tls=tls) as server, Proxy() as proxy:
        server.add("/m.bin", payload)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        out = download_verified([server.url("/m.bin")], tmp_path / "a.bin.part", sha(payload), len(payload), settings=FAST)
        assert proxy.seen == [f"CONNECT 127.0.0.1:{server.port}"]
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")  # does not trust our server
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        with pytest.raises(DownloadError, match="TLS/SSL verification failed.*REQUESTS_CA_BUNDLE"):
            download_verified([server.url("/m.bin")], tmp_path / "b.bin.part", sha(payload), len(payload), settings=FAST)
    assert out.read_bytes() == payload


def test_two_processes_download_the_same_model(tmp_path):
    data = tiny_bundle_zip(tmp_path / "tiny.zip")
    home = tmp_path / "home"
    with FileServer() as server:
        # ~1.5 s of transfer, so the second process starts while the first is still downloading
        server.add("/tiny.zip", data, delay=1.5 * 16384 / len(data))
        catalog = tmp_path / "catalog.json"  # from disk: its hash protects the http model URL
        catalog.write_text(catalog_json([catalog_entry("tiny-ct", data, [server.url("/tiny.zip")])]))
        env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
        command = [sys.executable, "-m", "mednextv2", "models", "--home", str(home), "--catalog",
                   str(catalog), "--progress", "none", "download", "tiny-ct"]
        procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        sent = server.routes["/tiny.zip"].bytes_sent
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.strip() == str(home / "models" / "tiny-ct")
    assert sent == len(data)  # the second process waited for the lock and found the model installed
    assert load_bundle(home / "models" / "tiny-ct").build_models("cpu")
    assert leftovers(home / "downloads") == [] and leftovers(home / "tmp") == []
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny-ct"]


def test_a_file_changed_between_a_cut_and_the_resume_restarts_cleanly(tmp_path, payload, caplog):
    """If-Range with the first response's ETag: the changed file comes whole, never spliced onto the part."""
    part = tmp_path / "m.bin.part"
    with FileServer() as server:
        server.add("/m.bin", payload, etag='"v1"', piece=16_384, delay=0.05)
        cut = DownloadSettings(connect_timeout=2.0, read_timeout=2.0, retries=0, chunk_size=8192,
                               min_rate=10e6, rate_window=0.3)  # given up as too slow: the part is kept
        with pytest.raises(DownloadError, match="too slow"):
            download_verified([server.url("/m.bin")], part, sha(payload), len(payload), settings=cut)
        assert 0 < part.stat().st_size < len(payload)
        changed = os.urandom(len(payload))  # a new version of the same size at the same URL
        server.add("/m.bin", changed, etag='"v2"')
        caplog.clear()
        caplog.set_level("INFO", logger="mednextv2.store.download")
        out = download_verified([server.url("/m.bin")], part, sha(changed), len(changed), settings=FAST)
        log = server.requests_for("/m.bin")
    assert out.read_bytes() == changed
    assert log[-1].headers.get("If-Range") == '"v1"' and len(log) == 2  # the cut, then one whole download
    assert "mismatch" not in caplog.text and "changed on the server" in caplog.text
    assert leftovers(tmp_path) == ["m.bin"]


def test_a_server_that_ignores_if_range_but_sends_another_etag_starts_over(tmp_path, payload, caplog):
    caplog.set_level("INFO", logger="mednextv2.store.download")
    part = tmp_path / "m.bin.part"
    part.write_bytes(os.urandom(50_000))  # bytes of an older version
    (tmp_path / "m.bin.part.validator").write_text('"old"', encoding="utf-8")
    with FileServer() as server:
        server.add("/m.bin", payload, etag='"new"', if_range=False)
        out = download_verified([server.url("/m.bin")], part, sha(payload), len(payload), settings=FAST)
        ranges = [r.headers.get("Range") for r in server.requests_for("/m.bin")]
    assert out.read_bytes() == payload and ranges == ["bytes=50000-", None]
    assert "mismatch" not in caplog.text  # never spliced: no checksum failure and retry


def test_a_gzip_encoded_answer_with_a_content_length_is_not_taken_for_a_portal_page(tmp_path):
    payload = bytes(range(256)) * 2000  # compresses: the encoded length differs from the file's size
    with FileServer() as server:
        server.add("/m.bin", payload, gzip=True, ranges=False)
        out = download_verified([server.url("/m.bin")], tmp_path / "m.bin.part", sha(payload), len(payload),
                                settings=FAST)
    assert out.read_bytes() == payload


def test_room_for_download_and_unpack_is_checked_up_front_and_a_verified_archive_is_kept(tmp_path, monkeypatch):
    import mednextv2.disk as disk_module

    home = tmp_path / "home"
    cache = ModelCache.open(home)
    data = tiny_bundle_zip(tmp_path / "tiny.zip")
    real_free = disk_module.free_bytes
    with FileServer() as server:
        server.add("/tiny.zip", data)
        entry = CatalogEntry.from_dict(catalog_entry("tiny-ct", data, [server.url("/tiny.zip")]), "test")
        # Room for the download, not for unpacking it: refused before a byte is fetched.
        monkeypatch.setattr(disk_module, "free_bytes", lambda folder: len(data) + (1 << 20) + len(data) // 2)
        with pytest.raises(ResourceError, match="not enough disk space for the download .* and unpacking it"):
            download_model(entry, cache, settings=FAST)
        assert server.requests_for("/tiny.zip") == []
        # Room runs out while unpacking (another program filled the disk): the verified archive stays ...
        monkeypatch.setattr(disk_module, "free_bytes", real_free)
        import mednextv2.store.importer as importer

        def full_disk(*args, **kwargs):
            raise ResourceError("not enough disk space for unpacking (test)")

        monkeypatch.setattr(importer, "safe_extract_zip", full_disk)
        with pytest.raises(ResourceError):
            download_model(entry, cache, settings=FAST)
        assert len(server.requests_for("/tiny.zip")) == 1
        assert [p.name for p in cache.downloads_of("tiny-ct")] == [f"tiny-ct-{entry.sha256[:16]}.zip"]
        # ... and the next attempt installs it without downloading again.
        monkeypatch.undo()
        monkeypatch.setenv("MEDNEXTV2_HOME", str(home))
        path = download_model(entry, cache, settings=FAST)
        assert len(server.requests_for("/tiny.zip")) == 1
    assert load_bundle(path).id == "tiny-ct" and cache.downloads_of("tiny-ct") == []
