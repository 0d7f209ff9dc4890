"""A local HTTP server on 127.0.0.1 serving files from a dict, for the hub tests (no test reaches
the internet). ``/cut/<path>`` promises the whole file and sends half, as a dropped connection."""

import contextlib
import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    hits: list = []

    def do_GET(self):
        self.hits.append(self.path)
        body = self.files.get(self.path.removeprefix("/cut"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path.startswith("/cut/") else body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving():
    """Yield (base URL, files by path, paths requested)."""
    files, hits = {}, []
    handler = type("Handler", (_Handler,), {"files": files, "hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files, hits
    finally:
        httpd.shutdown()
        httpd.server_close()
