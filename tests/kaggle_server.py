"""A stand-in for Kaggle's API and its download storage, on the loopback address, for tests.

The official client (``kaggle`` 2.x on ``kagglesdk``) talks to it unchanged: with
``KAGGLE_API_ENVIRONMENT=LOCALHOST`` (read when ``kaggle`` is imported) every API call
is ``POST http://localhost/api/v1/<service>/<method>``; kagglesdk's own ``TEST``
environment (``localhost:7777``) is not reachable through ``KaggleApi``, which always
names its environment (PROD, or LOCAL with that setting). Port 80 would need root and
is shared by the machine, so the server listens on a free loopback port and is given
to the client as its HTTP proxy (``http_proxy``, honoured by requests): it receives
each request with its full URL, answers those for ``localhost`` as the API and those
for ``storage.localhost`` as the bucket the download is redirected to, and refuses
any other host, so nothing leaves the machine.

What it answers, as Kaggle does:

- ``security.OAuthService/IntrospectToken``: ``{"active": true, "username": ...}``
  for a known token (how the client checks ``KAGGLE_API_TOKEN`` and
  ``~/.kaggle/access_token`` before it uses them);
- ``competitions.CompetitionApiService/DownloadDataFiles``: a 302 to a signed
  storage URL of the competition's zip;
- 401 ``{"code":401,"message":"Unauthorized"}`` to a call without a valid bearer
  token or legacy username/key (HTTP basic auth), and 403 with Kaggle's message
  before the rules are accepted;
- the archive with Content-Length, ETag, Last-Modified and ranges (206), so the
  client's own retries resume; ``cut`` downloads are cut off half-way (the
  connection closes early); with ``content_length`` False the length is not sent,
  so a cut download looks complete to the client; 403 from the storage where the
  signed link has expired.

The 401 and 403 bodies are those Kaggle sends (as quoted in the client's issue
reports); that an unknown token is a 401 to IntrospectToken too, the storage's host,
link and headers are a guess at Google Cloud Storage's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

COMPETITION = "severstal-steel-defect-detection"
API_HOST = "localhost"
STORAGE_HOST = "storage.localhost"
ARCHIVE_PATH = "/kaggle-competitions-data/kaggle-v2/14241/862020/bundle/archive.zip"
SIGNATURE = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
RULES_MESSAGE = "You must accept this competition's rules before you'll be able to download files."


class KaggleServer:
    """The stand-in server, started with ``with``; ``proxy`` is the URL to give as http_proxy.

    A test sets the state: ``tokens`` (access token -> username), ``keys`` (username ->
    legacy key), ``rules_accepted``, ``link_expired``, ``cut`` (how many of the next
    archive downloads are cut off half-way) and ``content_length``. ``calls`` records
    (method, URL, status, auth) of each request: auth is "bearer", "basic" or None.
    """

    def __init__(self, archive: Path):
        self.archive = Path(archive).read_bytes()
        self.etag = '"' + hashlib.md5(self.archive).hexdigest() + '"'
        self.last_modified = formatdate(1_700_000_000, usegmt=True)
        self.tokens: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.rules_accepted = True
        self.link_expired = False
        self.cut = 0
        self.content_length = True
        self.calls: list[tuple[str, str, int, str | None]] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def proxy(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KaggleServer:
        server = self

        class Handler(_Handler):
            kaggle = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        serve = {"poll_interval": 0.05}  # a quick shutdown
        threading.Thread(target=self._httpd.serve_forever, kwargs=serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def user(self, authorization: str | None) -> tuple[str | None, str | None]:
        """(username, "bearer" | "basic") of a valid Authorization header, else (None, kind)."""
        kind, _, value = (authorization or "").partition(" ")
        if kind == "Bearer":
            return self.tokens.get(value), "bearer"
        if kind == "Basic":
            try:
                name, _, key = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return None, "basic"
            return (name if key and self.keys.get(name) == key else None), "basic"
        return None, None

    def take_cut(self) -> bool:
        with self.lock:
            if self.cut > 0:
                self.cut -= 1
                return True
            return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hangs up is no error (the tests read stderr); anything else is raised
        in the server's thread, where it ends that request, and printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    kaggle: KaggleServer

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # the tests read stderr; ``calls`` records the requests

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, auth=None):
        """Answer ``status`` with ``headers`` (Content-Length: that of ``body`` unless they
        give one, or none where the connection is to close after the body)."""
        self.kaggle.calls.append((self.command, self.path, status, auth))
        headers = dict(headers or {})
        if self.close_connection:
            headers["Connection"] = "close"
        else:
            headers.setdefault("Content-Length", str(len(body)))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict, auth=None):
        body = json.dumps(data).encode()
        self._send(status, body, {"Content-Type": "application/json; charset=utf-8"}, auth)

    def do_POST(self):  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.hostname != API_HOST:
            return self._send(502, b"the stand-in Kaggle server forwards nothing")
        user, auth = self.kaggle.user(self.headers.get("Authorization"))
        if user is None:
            return self._json(401, {"code": 401, "message": "Unauthorized"}, auth)
        request = json.loads(body or b"{}")
        if url.path == "/api/v1/security.OAuthService/IntrospectToken":
            name = self.kaggle.tokens.get(request.get("token", ""))
            answer = {"active": True, "username": name, "scope": "resources.admin:*"}
            return self._json(200, answer if name else {"active": False}, auth)
        if url.path == "/api/v1/competitions.CompetitionApiService/DownloadDataFiles":
            if request.get("competitionName") != COMPETITION:
                return self._json(404, {"code": 404, "message": "Competition not found"}, auth)
            if not self.kaggle.rules_accepted:
                return self._json(403, {"code": 403, "message": RULES_MESSAGE}, auth)
            query = "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Expires=259199"
            location = f"http://{STORAGE_HOST}{ARCHIVE_PATH}?{query}&X-Goog-Signature={SIGNATURE}"
            return self._send(302, b"", {"Location": location}, auth)
        return self._json(404, {"code": 404, "message": f"no such call: {url.path}"}, auth)

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        if url.hostname != STORAGE_HOST:
            return self._send(502, b"the stand-in Kaggle server forwards nothing")
        auth = self.kaggle.user(self.headers.get("Authorization"))[1]
        signed = parse_qs(url.query).get("X-Goog-Signature") == [SIGNATURE]
        if url.path != ARCHIVE_PATH or not signed or self.kaggle.link_expired:
            refusal = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code></Error>"
            )
            return self._send(403, refusal, {"Content-Type": "application/xml"}, auth)
        data, start = self.kaggle.archive, 0
        ranges = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        if ranges.startswith("bytes=") and if_range in (None, self.kaggle.etag):
            start = int(ranges.removeprefix("bytes=").split("-")[0] or 0)
        if start >= len(data):
            headers = {"Content-Range": f"bytes */{len(data)}"}
            return self._send(416, b"", headers, auth)
        part = data[start:]
        headers = {
            "Content-Type": "application/zip",
            "Accept-Ranges": "bytes",
            "ETag": self.kaggle.etag,
            "Last-Modified": self.kaggle.last_modified,
            "Content-Length": str(len(part)),
        }
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if not self.kaggle.content_length:
            del headers["Content-Length"]
            self.close_connection = True  # the body ends where the connection does
        if self.kaggle.take_cut():
            self.close_connection = True
            self._send(status, part[: len(part) // 2], headers, auth)  # and no more: cut off
            return None
        return self._send(status, part, headers, auth)
