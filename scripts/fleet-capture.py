#!/usr/bin/env python3
"""Records what a fleet API client sends and what the server answers, for fixtures.

Usage: fleet-capture.py LISTEN_PORT UPSTREAM OUT.jsonl

LISTEN_PORT  where the client connects (http://127.0.0.1:LISTEN_PORT)
UPSTREAM     the fleet API: unix:///path/to/fleet.sock or http://host:port
OUT.jsonl    one JSON object per exchange, appended: method, path, content_type, body (the
             request's, as text), status, response (the answer's body, as text)

Used to capture the original CoreOS fleetctl (v1.0.0) against corelite's fleetd and the other
way round; fleet-agent/tests/fixtures/ holds the results and fleet-agent/tests/api.rs replays
them. Stop it with SIGTERM or Ctrl-C.
"""
import http.client
import http.server
import json
import socket
import sys


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def upstream_connection(upstream):
    if upstream.startswith("unix://"):
        return UnixHTTPConnection(upstream[len("unix://"):])
    if upstream.startswith("http://"):
        return http.client.HTTPConnection(upstream[len("http://"):].rstrip("/"))
    raise SystemExit(f"fleet-capture: unsupported upstream {upstream!r}")


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    port, upstream, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    out = open(out_path, "a", encoding="utf-8")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def relay(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            conn = upstream_connection(upstream)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            record = {
                "method": self.command,
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": body.decode("utf-8", "replace"),
                "status": resp.status,
                "response": data.decode("utf-8", "replace"),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = relay

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
