"""Verified, resumable HTTP(S) downloads.

What the Slicer extensions' users keep reporting (stalls, no resume, proxies, SSL, corrupt
files) is handled here:
- streaming with `requests`, connect and read timeouts, retries with exponential backoff;
- an interrupted download is kept as `<name>.part` and resumed with an HTTP Range request;
- the SHA-256 is checked before the file gets its final name, and a mismatch deletes it;
- a link slower than `min_rate` on average over `rate_window` is given up, keeping the part;
- proxies and CA bundles come from the environment (`HTTPS_PROXY`, `NO_PROXY`,
  `REQUESTS_CA_BUNDLE`) because the session keeps requests' `trust_env`;
- only http(s) URLs, and never more bytes than the catalog says.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from mednextv2 import __version__
from mednextv2.atomic import sha256_file, write_bytes
from mednextv2.disk import format_size, require_free_space
from mednextv2.errors import InputError, MedNeXtError, ResourceError
from mednextv2.store.cache import HOME_ENV

log = logging.getLogger(__name__)
_SPACE_ADVICE = f"Free some space or set {HOME_ENV} to another disk."  # downloads go under the home folder

ProgressCallback = Callable[..., None]
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_PERMANENT_STATUS = {400, 401, 403, 404, 405, 410, 451}
T = TypeVar("T")


class DownloadError(MedNeXtError):
    """The file could not be fetched: offline, HTTP error, TLS or proxy failure."""


class ChecksumError(DownloadError):
    """The bytes received are not the file the catalog describes; nothing was kept."""


@dataclass(frozen=True)
class DownloadSettings:
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    retries: int = 4          # further tries after the first, per URL, without progress
    backoff: float = 1.0      # seconds before the first retry, doubled each time
    max_backoff: float = 30.0
    chunk_size: int = 1 << 20
    max_bytes: int = 50 * 1024 ** 3   # refuse anything larger, whatever a catalog says
    # A server dripping a byte every few seconds never trips the read timeout: the average rate
    # over each `rate_window` seconds must reach `min_rate` bytes/s.
    min_rate: float = 1024.0
    rate_window: float = 60.0
    flush_every: float = 2.0  # seconds between flushes of the part file, so a kill leaves a resumable part


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"only http:// and https:// URLs are accepted, got {url!r}")
    return url


def _redirect_guard(https_only: bool) -> Callable[..., None]:
    """A `requests` response hook that checks each redirect's target before it is followed: every
    hop stays http(s), and with `https_only` (catalogs) https, so no plain-http hop can choose the content."""

    def check_hop(response, *args, **kwargs) -> None:
        if not response.is_redirect:
            return
        target = urljoin(response.url, response.headers.get("location", ""))
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https") or (https_only and scheme != "https"):
            response.close()
            where = "plain http" if scheme == "http" else scheme or "a URL without a scheme"
            raise InputError(f"{response.url} redirected to {where} ({target}); refused, because its content must "
                             f"come over {'https' if https_only else 'http(s)'}")

    return check_hop


def new_session() -> requests.Session:
    session = requests.Session()  # trust_env=True: HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, .netrc
    session.headers["User-Agent"] = f"mednextv2/{__version__}"
    return session


class _Transient(Exception):
    """A failure worth retrying (connection dropped, timeout, HTTP 5xx)."""


class _StartOver(Exception):
    """The partial file cannot be continued; delete it and fetch from byte 0."""


class _TooSlow(DownloadError):
    """The server sends, but slower than DownloadSettings.min_rate."""


def _arrivals(response, url: str, settings: DownloadSettings) -> Iterator[bytes]:
    """The body in the pieces the network delivers, not in whole chunks, so that the rate check
    (and the caller's flush) run even on a link that drips a byte at a time."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2.3
    pieces = _read1_pieces(read1, settings.chunk_size) if read1 else \
        response.iter_content(chunk_size=min(settings.chunk_size, 1 << 14))  # older: a chunk must fill first
    received, window_start, window_bytes = 0, time.monotonic(), 0
    for piece in pieces:
        yield piece
        received += len(piece)
        now = time.monotonic()
        if now - window_start >= settings.rate_window:
            rate = (received - window_bytes) / (now - window_start)
            if rate < settings.min_rate:
                raise _TooSlow(f"the download from {urlsplit(url).netloc} is too slow: {format_size(int(rate))}/s "
                               f"over the last {now - window_start:.0f} s, below the minimum of "
                               f"{format_size(int(settings.min_rate))}/s")
            window_start, window_bytes = now, received


def _read1_pieces(read1, size: int) -> Iterator[bytes]:
    """urllib3's errors as the requests errors that iter_content would raise."""
    try:
        while True:
            piece = read1(size, decode_content=True)
            if not piece:
                return
            yield piece
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.exceptions.ReadTimeout(e) from e
    except urllib3.exceptions.SSLError as e:
        raise requests.exceptions.SSLError(e) from e
    except urllib3.exceptions.HTTPError as e:  # protocol errors, a connection cut mid-body
        raise requests.exceptions.ConnectionError(e) from e


def download_verified(urls: Sequence[str], part: Path, sha256: str, size: int, *,
                      progress: Optional[ProgressCallback] = None,
                      settings: DownloadSettings = DownloadSettings(),
                      session: Optional[requests.Session] = None, then_needs: int = 0) -> Path:
    """Fetch `size` bytes with the given SHA-256 from the first URL that works.

    Bytes go to `part` (resumed if it exists); the verified file is renamed to `part` without
    its `.part` suffix and that path is returned; a verified file already there is returned as
    it is. `then_needs`: bytes the caller writes next beside it (unpacking), checked up front
    with the download's, so a download never completes only to fail for room. The caller holds
    the cache lock."""
    if not urls:
        raise InputError("no download URL given")
    for url in urls:
        check_url(url)
    if size > settings.max_bytes:
        raise InputError(f"refusing to download {format_size(size)} (limit {format_size(settings.max_bytes)})")
    if part.suffix != ".part":
        raise ValueError(f"partial download file must end with .part: {part}")
    final = part.with_suffix("")
    part.parent.mkdir(parents=True, exist_ok=True)
    if final.is_file():  # verified by an earlier run that could not finish (no room to unpack)
        if final.stat().st_size == size and sha256_file(final, progress) == sha256:
            log.info("using the verified download %s from an earlier attempt", final)
            require_free_space(part.parent, then_needs, f"unpacking {final.name}", _SPACE_ADVICE)
            return final
        final.unlink()
    session = session or new_session()
    have = part.stat().st_size if part.exists() else 0
    require_free_space(part.parent, max(size - have, 0) + (1 << 20) + then_needs,
                       f"the download into {part.parent}" + (" and unpacking it" if then_needs else ""), _SPACE_ADVICE)

    resumed = have > 0
    last_error: Optional[Exception] = None
    for url in urls:
        # A resumed part may splice two versions of a changed file: on a mismatch, one clean try.
        for attempt in (("resume", "fresh") if resumed else ("fresh",)):
            try:
                _with_retries(lambda: _fetch_resumable(session, url, part, size, settings, progress), settings,
                              received=lambda: part.stat().st_size if part.exists() else 0)
            except DownloadError as e:
                if isinstance(e, ChecksumError):
                    _discard(part)  # wrong bytes are never kept, not even for a resume
                last_error = e
                log.warning("%s", e)
                break
            digest = sha256_file(part, progress)
            if digest == sha256:
                os.replace(part, final)
                _discard(part)
                return final
            _discard(part)
            last_error = ChecksumError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {digest}. The file was deleted. "
                "The download was corrupted or the file on the server is not the one the catalog describes; "
                "try again later, and report it to the catalog's publisher if it persists.")
            if attempt == "resume":
                log.warning("SHA-256 mismatch after resuming; downloading %s again from the start", url)
        resumed = False
    if len(urls) > 1 and not isinstance(last_error, ChecksumError):
        raise DownloadError(f"all {len(urls)} download URLs failed; last error: {last_error}") from last_error
    raise last_error  # type: ignore[misc]


def _with_retries(attempt: Callable[[], T], settings: DownloadSettings,
                  received: Callable[[], int] = lambda: 0) -> T:
    """`attempt()`, tried again after each transient failure with exponential backoff, until
    `settings.retries` further tries in a row brought no progress (`received()` bytes did not grow)."""
    failures = 0
    while True:
        before = received()
        try:
            return attempt()
        except _Transient as e:
            now = received()
            failures = 0 if now > before else failures + 1  # a flaky link that progresses may go on
            if failures > settings.retries:
                raise DownloadError(f"{e} (gave up after {settings.retries + 1} tries)") from e
            delay = min(settings.backoff * 2 ** max(failures - 1, 0), settings.max_backoff)
            log.warning("%s; retrying in %.1f s%s", e, delay, f" ({format_size(now)} received)" if now else "")
            time.sleep(delay)


def _fetch_resumable(session, url, part, size, settings, progress) -> None:
    try:
        _fetch_once(session, url, part, size, settings, progress)
    except _StartOver:
        _discard(part)
        # From byte 0 no Range is asked, so the server cannot ask to start over a second time.
        _fetch_once(session, url, part, size, settings, progress)


def _fetch_once(session, url, part, size, settings, progress) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        raise _StartOver()
    if have == size:
        return  # complete; the checksum decides
    headers = {"Accept-Encoding": "identity"}  # sizes and ranges refer to the raw bytes
    validator = _read_validator(part) if have else None
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator  # a changed file comes whole (200), never spliced onto the part
    try:
        response = session.get(url, stream=True, headers=headers, allow_redirects=True,
                               hooks={"response": _redirect_guard(https_only=False)},
                               timeout=(settings.connect_timeout, settings.read_timeout))
    except requests.exceptions.RequestException as e:
        _raise_network_error(e, url, settings)
    with response:
        check_url(response.url)  # a redirect must not leave http(s)
        if response.status_code == 416 and have:
            raise _StartOver()
        if response.status_code >= 400:
            _raise_http_error(response, url)
        # A server may encode the body anyway (gzip): then its lengths and ranges count encoded bytes.
        encoded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        if response.status_code == 206 and have:
            if encoded or (validator and _validator(response) not in (None, validator)):
                raise _StartOver()  # encoded ranges cannot continue decoded bytes; a changed file must not splice
            _check_content_range(response, url, have, size)
            mode = "ab"
        else:
            if have:
                log.info("%s; downloading from the start", "the file changed on the server since the partial download"
                         if validator else f"{urlsplit(url).netloc} ignores HTTP Range")
            have, mode = 0, "wb"
            _write_validator(part, None if encoded else _validator(response))
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != size and not encoded:
                raise ChecksumError(f"{url} is {format_size(int(length))} ({length} bytes) but the catalog says "
                                    f"{size} bytes: not the file the catalog describes (or a login/portal page)")
        _stream_to(response, part, mode, have, size, url, settings, progress)


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _validator(response) -> Optional[str]:
    """What identifies this version of the file for If-Range: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified", "").strip() or None


def _read_validator(part: Path) -> Optional[str]:
    try:
        return _validator_path(part).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _write_validator(part: Path, validator: Optional[str]) -> None:
    path = _validator_path(part)
    if validator and validator.isprintable() and len(validator) < 1024:
        write_bytes(path, validator.encode("utf-8"))
    else:
        path.unlink(missing_ok=True)


def _discard(part: Path) -> None:
    """Delete a partial download and the record of which version of the file it holds."""
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def _stream_to(response, part, mode, have, size, url, settings, progress) -> None:
    done = have
    last_report = 0.0
    started = last_flush = time.monotonic()
    try:
        with open(part, mode) as f:
            for chunk in _arrivals(response, url, settings):
                if not chunk:
                    continue
                if done + len(chunk) > size:
                    f.write(chunk[: size - done])
                    raise ChecksumError(f"{url} sent more than the {size} bytes the catalog lists; not the expected file")
                f.write(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last_flush >= settings.flush_every:
                    f.flush()
                    last_flush = now
                if progress and (now - last_report > 0.25 or done == size):
                    last_report = now
                    rate = (done - have) / max(now - started, 1e-6)
                    eta = (size - done) / rate if rate > 0 else None
                    progress("download", done / size, f"{format_size(done)} of {format_size(size)}",
                             eta_s=eta, bytes=done, total_bytes=size)
    except _TooSlow as e:
        raise DownloadError(f"{e}. The {format_size(done)} received so far are kept in {part}: run the download "
                            "again to resume it, on a faster connection if possible.") from e
    except requests.exceptions.RequestException as e:  # before OSError: requests' errors derive from it
        _raise_network_error(e, url, settings)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(f"disk full while writing {part}: {format_size(done)} of {format_size(size)} written. "
                                "Free some space and run the download again: it resumes where it stopped.") from e
        raise ResourceError(f"cannot write {part}: {e}") from e
    if done < size:
        raise _Transient(f"connection to {urlsplit(url).netloc} closed after {format_size(done)} of {format_size(size)}")


def _check_content_range(response, url, have, size) -> None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        raise _StartOver()  # the server answered a different range than asked: be safe
    total = match.group(3)
    if total != "*" and int(total) != size:
        raise ChecksumError(f"{url} is {total} bytes but the catalog says {size}: not the file the catalog describes")


def _raise_http_error(response, url) -> None:
    status = response.status_code
    text = f"HTTP {status} {response.reason or ''}".strip() + f" from {url}"
    if status in _PERMANENT_STATUS:
        hint = {404: "the file is not (or no longer) there; the catalog may be out of date",
                401: "the server wants a login", 403: "access denied by the server (or by a proxy)"}.get(status, "")
        raise DownloadError(f"{text}{': ' + hint if hint else ''}")
    raise _Transient(text)


def _raise_network_error(e: Exception, url: str, settings: DownloadSettings):
    host = urlsplit(url).netloc
    if isinstance(e, requests.exceptions.SSLError):
        raise DownloadError(
            f"TLS/SSL verification failed for {host}: {_root_cause(e)}. If your network inspects HTTPS "
            "traffic, set REQUESTS_CA_BUNDLE to the file of your organisation's CA certificates.") from e
    if isinstance(e, requests.exceptions.ProxyError):
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("HTTP_PROXY") \
            or os.environ.get("http_proxy") or "the configured proxy"
        raise _Transient(f"cannot reach {host} through the proxy {proxy}: {_root_cause(e)} "
                         "(check HTTPS_PROXY / HTTP_PROXY / NO_PROXY)") from e
    if isinstance(e, requests.exceptions.ConnectTimeout):
        raise _Transient(f"no answer from {host} within {settings.connect_timeout:g} s: offline or blocked by a firewall?") from e
    if isinstance(e, (requests.exceptions.ReadTimeout, requests.exceptions.Timeout)):
        raise _Transient(f"{host} stopped sending data for {settings.read_timeout:g} s") from e
    if isinstance(e, requests.exceptions.InvalidURL) or isinstance(e, requests.exceptions.MissingSchema):
        raise InputError(f"invalid URL {url!r}: {e}") from e
    cause = _root_cause(e)
    if any(s in cause for s in ("Name or service not known", "getaddrinfo failed", "nodename nor servname",
                                 "Temporary failure in name resolution", "NameResolutionError", "No address associated")):
        raise _Transient(f"cannot resolve {host}: this computer seems to be offline. Without internet, copy the "
                         "model file from another computer and use `mednextv2 models import FILE`") from e
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        raise _Transient(f"connection to {host} failed: {cause}") from e
    raise DownloadError(f"download from {url} failed: {cause}") from e


def _root_cause(e: BaseException) -> str:
    seen = e
    while seen.__context__ is not None and seen.__context__ is not seen:
        seen = seen.__context__
    text = str(e)
    deepest = str(seen)
    return deepest if len(deepest) < len(text) and deepest else text


def fetch_bytes(url: str, max_bytes: int, *, settings: DownloadSettings = DownloadSettings(),
                session: Optional[requests.Session] = None, https_only: bool = False) -> bytes:
    """A small file (a catalog) into memory, with the same timeouts, retries and messages.

    `https_only`: a redirect to plain http is refused (a catalog's checksums need https)."""
    check_url(url)
    session = session or new_session()
    return _with_retries(lambda: _fetch_small(session, url, max_bytes, settings, https_only), settings)


def _fetch_small(session, url, max_bytes, settings, https_only) -> bytes:
    try:
        response = session.get(url, stream=True, hooks={"response": _redirect_guard(https_only)},
                               timeout=(settings.connect_timeout, settings.read_timeout))
    except requests.exceptions.RequestException as e:
        _raise_network_error(e, url, settings)
    with response:
        check_url(response.url)
        if https_only and urlsplit(response.url).scheme != "https":
            raise InputError(f"{url} redirected to plain http ({response.url}); refused, because its content must "
                             "come over https")
        if response.status_code >= 400:
            _raise_http_error(response, url)
        data = bytearray()
        try:
            for chunk in _arrivals(response, url, settings):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise InputError(f"{url} is larger than the {format_size(max_bytes)} allowed for it")
        except requests.exceptions.RequestException as e:
            _raise_network_error(e, url, settings)
    return bytes(data)
