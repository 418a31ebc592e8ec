"""An S3 proxy that counts: every request forwarded unchanged to a real server (tests/seaweed.py), counted by
kind, and the content each object's GETs returned. benchmarks/s3_requests.py bills a run with it; tests count
downloads with it."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections import Counter
from urllib.parse import parse_qs, unquote, urlsplit


def kind(method: str, path: str, headers: http.client.HTTPMessage) -> str:
    """An S3 request's kind: what a bill or a rate limit counts."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if method == "GET" and ("list-type" in query or urlsplit(path).path.rstrip("/").count("/") <= 1):
        return "LIST"
    if method == "PUT" and headers.get("x-amz-copy-source"):
        return "COPY"
    if "uploads" in query or "uploadId" in query:
        return f"{method} (multipart)"
    return method


class CountingProxy:
    """Forwards every request to ``upstream`` unchanged (Host header included: SigV4 signs it) and counts it."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.counts: Counter = Counter()
        self.body_bytes: Counter = Counter()  # object key (bucket/key) -> bytes its GETs returned
        self.body_gets: Counter = Counter()  # object key -> GETs of its content (ranged or whole)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(parts)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                with proxy.lock:
                    proxy.counts[kind(self.command, self.path, self.headers)] += 1
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in ("transfer-encoding", "content-length"):
                        conn.putheader(k, v)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                if kind(self.command, self.path, self.headers) == "GET" and resp.status in (200, 206):
                    key = unquote(urlsplit(self.path).path.lstrip("/"))
                    with proxy.lock:
                        proxy.body_bytes[key] += len(data)
                        proxy.body_gets[key] += 1
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # A HEAD's Content-Length is the object's size, not the (empty) body's.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> dict[str, int]:
        with self.lock:
            counts, self.counts = dict(self.counts), Counter()
            self.body_bytes, self.body_gets = Counter(), Counter()
        return counts

    def close(self) -> None:
        self.server.shutdown()
