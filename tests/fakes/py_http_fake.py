#!/usr/bin/env python3
"""A scriptable HTTP/1.1 server on Python's standard http.server, for testing engram's HTTP clients
against a server that is not ours (Boost.Beast fakes write header and body in one segment, which
hides framing bugs; most real servers do not).

    py_http_fake.py --port-file FILE [--routes FILE]

Binds 127.0.0.1 on a free port, writes the port to FILE once it listens, and serves until killed.
Every route answers a canned response; `/_fake/...` is the control API the test uses:

    PUT  /_fake/routes    [route, ...]          replaces the routes
    POST /_fake/queue     route                 a one-shot answer for (method, path), used before the route
    GET  /_fake/requests                        [{method, path, query, headers, body, connection}, ...]
    GET  /_fake/stats                           {"connections": N, "requests": M}
    POST /_fake/reset                           forgets the requests (not the routes)

A route: {"method": "POST", "path": "/v1/chat/completions" (a trailing * matches a prefix),
          "status": 200, "headers": {...}, "json": <value> | "body": "<text>",
          "mode": "split" | "plain" | "chunked" | "close" | "sse" | "cycle",
          "delay_ms": 20 (between the pieces), "chunks": 3, "wait_ms": 0 (before answering),
          "builtin": "openai_embeddings" | "echo", "events": ["<sse frame>", ...]}

Modes (how the answer is framed on the wire):
    split    headers flushed, a pause, then the body (Content-Length)
    plain    headers and body in one write (Content-Length)
    chunked  Transfer-Encoding: chunked, the body in `chunks` chunks with pauses between
    close    no Content-Length: the body in pieces, then the connection is closed
    sse      text/event-stream, chunked, the frames of `events` cut at odd places, then the end
    cycle    split, chunked, close, plain in turn, one per request
The control API always answers `plain`.
"""
import argparse
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()
ROUTES = []
QUEUE = []
REQUESTS = []
STATS = {"connections": 0, "requests": 0, "cycle": 0}
CYCLE = ["split", "chunked", "close", "plain"]


def embedding(text, dims):
    """Deterministic unit vector for `text` (hashed bag of words)."""
    v = [0.0] * dims
    for word in text.lower().split():
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        v[h % dims] += 1.0 if (h >> 63) else -1.0
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v] if n > 0 else v


def matches(route, method, path):
    if route.get("method", "GET") != method:
        return False
    want = route.get("path", "/")
    return path.startswith(want[:-1]) if want.endswith("*") else path == want


def pieces(data, n):
    """`data` cut into n non-empty pieces of uneven sizes (when it is long enough)."""
    n = max(1, min(n, len(data)))
    if n == 1:
        return [data]
    cuts = sorted({max(1, (len(data) * (2 * i + 1)) // (2 * n + 1)) for i in range(1, n)})
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return [p for p in out if p]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the answer says otherwise
    server_version = "py-http-fake"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with LOCK:
            STATS["connections"] += 1
            self.conn_id = STATS["connections"]

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/_fake/"):
            return self.control(url.path, body)
        record = {
            "method": self.command,
            "path": url.path,
            "query": dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "connection": self.conn_id,
        }
        with LOCK:
            STATS["requests"] += 1
            REQUESTS.append(record)
            route = None
            for i, q in enumerate(QUEUE):
                if matches(q, self.command, url.path):
                    route = QUEUE.pop(i)
                    break
            if route is None:
                route = next((r for r in ROUTES if matches(r, self.command, url.path)), None)
            mode = (route or {}).get("mode", "split")
            if mode == "cycle":
                mode = CYCLE[STATS["cycle"] % len(CYCLE)]
                STATS["cycle"] += 1
        if route is None:
            return self.answer(404, {}, json.dumps({"error": "not_found", "detail": "no route for " + url.path}), "split", {})
        if route.get("wait_ms"):
            time.sleep(route["wait_ms"] / 1000.0)
        status = route.get("status", 200)
        builtin = route.get("builtin")
        if builtin == "openai_embeddings":
            req = json.loads(body or "{}")
            inputs = req.get("input", "")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            dims = route.get("dimensions", 8)
            payload = json.dumps({
                "object": "list",
                "model": req.get("model", "fake"),
                "data": [{"object": "embedding", "index": i, "embedding": embedding(t, dims)} for i, t in enumerate(inputs)],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            })
        elif builtin == "echo":
            payload = json.dumps(record)
        elif "json" in route:
            payload = json.dumps(route["json"])
        else:
            payload = route.get("body", "")
        self.answer(status, route.get("headers", {}), payload, mode, route)

    def answer(self, status, headers, payload, mode, route):
        data = payload.encode("utf-8")
        delay = route.get("delay_ms", 20) / 1000.0
        n = route.get("chunks", 3)
        head_only = self.command == "HEAD"
        self.send_response(status)
        has_type = any(k.lower() == "content-type" for k in headers)
        if not has_type:
            self.send_header("Content-Type", "text/event-stream" if mode == "sse" else "application/json")
        for k, v in headers.items():
            self.send_header(k, str(v))
        if mode in ("split", "plain"):
            self.send_header("Content-Length", str(len(data)))
            if mode == "plain":
                # Status line, headers and body leave in one write.
                self._headers_buffer.append(b"\r\n")
                self._headers_buffer.append(b"" if head_only else data)
                self.wfile.write(b"".join(self._headers_buffer))
                self._headers_buffer = []
                return
            self.end_headers()  # flushed: the header goes out on its own
            if head_only:
                return
            time.sleep(delay)
            self.wfile.write(data)
        elif mode in ("chunked", "sse"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head_only:
                return
            parts = []
            if mode == "sse":
                stream = "".join(route.get("events", [])).encode("utf-8") or data
                parts = pieces(stream, max(n, len(route.get("events", [])) * 2))
            else:
                parts = pieces(data, n)
            for p in parts:
                time.sleep(delay)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            time.sleep(delay)
            self.wfile.write(b"0\r\n\r\n")
        elif mode == "close":
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if head_only:
                return
            for p in pieces(data, n):
                time.sleep(delay)
                self.wfile.write(p)
        else:
            raise ValueError("unknown mode " + mode)

    def control(self, path, body):
        global ROUTES, REQUESTS
        out = {"ok": True}
        with LOCK:
            if path == "/_fake/routes" and self.command == "PUT":
                ROUTES = json.loads(body)
            elif path == "/_fake/queue" and self.command == "POST":
                QUEUE.append(json.loads(body))
            elif path == "/_fake/requests":
                out = REQUESTS
            elif path == "/_fake/stats":
                out = {"connections": STATS["connections"], "requests": STATS["requests"]}
            elif path == "/_fake/reset" and self.command == "POST":
                REQUESTS = []
            else:
                out = {"error": "not_found"}
            data = json.dumps(out).encode()
        self.send_response(200 if "error" not in out else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._headers_buffer.append(b"\r\n" + data)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    global ROUTES
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--routes")
    args = ap.parse_args()
    if args.routes:
        with open(args.routes) as f:
            ROUTES = json.load(f)
    srv = Server(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, args.port_file)
    sys.stderr.write("listening on 127.0.0.1:%d\n" % srv.server_address[1])
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
