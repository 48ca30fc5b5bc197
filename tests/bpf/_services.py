"""Small uninstrumented services the kernel tests run as real processes."""

# A front service with no SDK that, per request, calls a backend: only the kernel sees both hops.
FRONT = r"""
import http.server, sys, urllib.request
backend = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with urllib.request.urlopen(backend + "/inner", timeout=5) as r:
            body = r.read()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""
