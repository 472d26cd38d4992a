"""A real HTTP(S) file server and a forwarding proxy on 127.0.0.1, for the download tests.

The file server answers Range requests and can misbehave per file: drop the connection part-way
(a set number of times), serve wrong bytes of the right length, answer with an error status or a
redirect, or
send slowly (down to a byte at a time). The proxy forwards plain-HTTP requests and tunnels HTTPS (CONNECT), and records
what went through it, so a test can prove the proxy variables were honoured.
"""
from __future__ import annotations

import gzip
import http.client
import re
import select
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

CHUNK = 16 * 1024


@dataclass
class Route:
    data: bytes
    status: Optional[int] = None     # answer this HTTP status instead of the file
    drop_after: Optional[int] = None  # close the connection after this many body bytes ...
    drops: int = 0                    # ... on this many requests
    corrupt: bool = False             # flip bytes, keep the length
    delay: float = 0.0                # seconds to wait before each chunk
    piece: int = CHUNK                # bytes per chunk (1 with a delay: a server that drips)
    header_delay: float = 0.0         # seconds to wait before answering at all
    ranges: bool = True               # honour Range headers
    location: Optional[str] = None    # answer 302 Found, redirecting here
    etag: Optional[str] = None        # send this ETag and honour If-Range against it ...
    if_range: bool = True             # ... unless False: a server that answers the range regardless
    gzip: bool = False                # send the body gzip-encoded (Content-Encoding), whatever was asked
    bytes_sent: int = 0               # body bytes sent over all requests


@dataclass
class RequestLog:
    path: str
    headers: Dict[str, str]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # dropped sockets are the point of some tests
        pass


class FileServer:
    """`with FileServer() as server: server.add("/m.zip", data); server.url("/m.zip")`."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.routes: Dict[str, Route] = {}
        self.log: List[RequestLog] = []
        self.lock = threading.Lock()
        self.tls = tls
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, data: bytes, **behaviour) -> Route:
        route = Route(data=data, **behaviour)
        self.routes[path] = route
        return route

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def requests_for(self, path: str) -> List[RequestLog]:
        with self.lock:
            return [r for r in self.log if r.path == path]

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urlsplit(self.path).path
                with server.lock:
                    server.log.append(RequestLog(path, dict(self.headers.items())))
                route = server.routes.get(path)
                if route is None:
                    return self._error(404, "Not Found")
                if route.header_delay:
                    time.sleep(route.header_delay)
                if route.location is not None:
                    self.send_response(302)
                    self.send_header("Location", route.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.status is not None:
                    return self._error(route.status, "test status")
                data = bytes(b ^ 0xFF for b in route.data) if route.corrupt else route.data
                if route.gzip:
                    data = gzip.compress(data)
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if_range = self.headers.get("If-Range")
                if if_range is not None and if_range != route.etag and route.if_range:
                    match = None  # the file changed since the part was fetched: send it whole (RFC 9110)
                if match and route.ranges:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
                if route.etag is not None:
                    self.send_header("ETag", route.etag)
                if route.gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                drop_at = None
                with server.lock:
                    if route.drop_after is not None and route.drops > 0:
                        route.drops -= 1
                        drop_at = route.drop_after
                sent = 0
                body = data[start:]
                while sent < len(body):
                    if route.delay:
                        time.sleep(route.delay)
                    end = min(sent + max(route.piece, 1), len(body))
                    if drop_at is not None and end >= drop_at:
                        self.wfile.write(body[sent:drop_at])
                        self.wfile.flush()
                        with server.lock:
                            route.bytes_sent += max(drop_at - sent, 0)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(body[sent:end])
                    with server.lock:
                        route.bytes_sent += end - sent
                    sent = end

            def _error(self, status, text):
                body = f"{status} {text}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class Proxy:
    """A forward proxy: absolute-URI GETs are relayed, CONNECT is tunnelled. `seen` lists both."""

    def __init__(self) -> None:
        self.seen: List[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.seen.append(f"GET {self.path}")
                target = urlsplit(self.path)
                conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                conn.request("GET", target.path or "/", headers=headers)
                response = conn.getresponse()
                body = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

            def do_CONNECT(self):
                proxy.seen.append(f"CONNECT {self.path}")
                host, port = self.path.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)), timeout=30)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                sockets = [self.connection, upstream]
                try:
                    while True:
                        readable, _, _ = select.select(sockets, [], [], 30)
                        if not readable:
                            return
                        for sock in readable:
                            data = sock.recv(65536)
                            if not data:
                                return
                            (upstream if sock is self.connection else self.connection).sendall(data)
                finally:
                    upstream.close()

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed_tls(folder: Path) -> Tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the certificate file a client must trust."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


# ---------------------------------------------------------------- what the server serves
def tiny_bundle_zip(path: Path, model_id: str = "tiny-ct", seed: int = 0) -> bytes:
    """A real, loadable bundle zip of a very small MedNeXt (random weights); returns its bytes."""
    import torch

    from mednextv2.bundle import Bundle
    from mednextv2.network import MedNeXt, MedNeXtConfig

    torch.manual_seed(seed)
    config = MedNeXtConfig(in_channels=1, n_channels=2, n_classes=2, exp_r=2, block_counts=1, grn=True,
                           deep_supervision=False)
    spec = {"format_version": 1, "id": model_id, "title": "Tiny test model (CT)", "network": config.to_dict(),
            "labels": [{"value": 1, "name": "tumor", "color": [255, 0, 0]}],
            "channels": [{"name": "CT", "modality": "CT"}],
            "preprocessing": {"target_spacing": [2.0, 2.0, 2.0],
                              "normalization": [{"scheme": "ct", "clip": [-1000, 400], "mean": -300.0, "std": 400.0}]},
            "inference": {"patch_size": [32, 32, 32]}}
    Bundle.create(spec, [MedNeXt(config).state_dict()]).save(path)
    return path.read_bytes()


def catalog_json(entries: List[dict], version: str = "test-1") -> str:
    import json

    return json.dumps({"catalog_format": 1, "catalog_version": version, "models": entries})


def catalog_entry(model_id: str, data: bytes, urls: List[str], **overrides) -> dict:
    import hashlib

    entry = {"id": model_id, "title": f"Test model {model_id}", "description": "served by the test server",
             "version": "1.0", "modality": "CT",
             "labels": [{"value": 1, "name": "tumor", "color": [255, 0, 0],
                         "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                         "type": ["SCT", "108369006", "Neoplasm"]}}],
             "urls": urls, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
             "license": "CC-BY-4.0", "citation": "Test et al. 2026", "min_gpu_memory_gb": 1.0,
             "timings": {"cpu_s": 1.0, "gpu_s": None}}
    entry.update(overrides)
    return entry
