"""A webhook receiver for the tests, run as its own process: `python -m tests.webhook_receiver PORT SECRET RECORD`.

It verifies each POST's signature with the standardwebhooks library and appends one JSON line to RECORD per
request: the headers' `webhook-id`, whether the signature verified, the body's `webhook_event` and job id, and
the body. It answers 204 when the signature verifies, 401 when not. With `--hang`, it records the request and
then never answers, so a test can kill it in the middle of a delivery. With `--tls CERT KEY`, it speaks https with
that certificate.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import standardwebhooks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("secret")
    parser.add_argument("record", type=Path)
    parser.add_argument("--hang", action="store_true", help="record each request, then never answer it")
    parser.add_argument("--tls", nargs=2, type=Path, metavar=("CERT", "KEY"), help="serve https with this certificate")
    args = parser.parse_args()
    verifier = standardwebhooks.Webhook(args.secret)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps the connection open for the next request, as most servers do

        def do_POST(self) -> None:  # noqa: N802  (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                verifier.verify(body, dict(self.headers.items()))
                verified = True
            except standardwebhooks.WebhookVerificationError:
                verified = False
            payload = json.loads(body)
            line = {
                "webhook_id": self.headers.get("webhook-id"),
                "verified": verified,
                "host": self.headers.get("host"),
                "event": payload.get("webhook_event"),
                "job_id": payload.get("id"),
                "body": payload,
                "hung": args.hang,
            }
            with lock, args.record.open("a") as record:
                record.write(json.dumps(line) + "\n")
            if args.hang:
                threading.Event().wait()  # until the test kills this process
            self.send_response(204 if verified else 401)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
