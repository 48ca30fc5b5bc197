"""Demo workload: an uninstrumented inventory service (plain http.server); only the kernel probes see it."""
from __future__ import annotations

import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        time.sleep(random.uniform(0.002, 0.01))
        body = json.dumps({"path": self.path, "in_stock": random.randint(0, 40)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    """Serve on the port given as the only argument (0: any free port, printed once bound)."""
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _Handler)
    print(f"inventory ready on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
