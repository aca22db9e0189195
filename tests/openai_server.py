"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions API, with faults.

Used by the translation tests and ``bench/translate_loopback.py``. It serves

- ``GET /v1/models``: the model list (the client's free pre-flight call);
- ``POST /v1/chat/completions``: a deterministic fake translation. The source
  text is the last paragraph of the last user message (after the last blank
  line, as in the default prompt template) and the target language is the
  language name after ``into`` (``"... into French ..."``). The reply is the
  reference text of that language from ``references`` (source text -> lang ->
  text, e.g. the bundled parallel corpus), so the language check passes; for an
  unknown text it is ``"<lang> " + text``.

Faults are injected per request, either from a fixed ``schedule`` (item key ->
list of fault kinds for its 1st, 2nd ... request) or at random with
``fault_rate`` (kinds drawn uniformly from ``fault_kinds``; the draw is a hash of
the seed, the item and its request number, so a run is reproducible). Kinds:

- ``429``: ``Retry-After`` (seconds) and ``retry-after-ms`` headers;
- ``500``: an internal server error;
- ``hang``: no reply for ``hang_seconds`` (longer than the client timeout), then
  the connection is closed without a response: nothing was generated, so it is
  not a paid call;
- ``malformed``: status 200 with a truncated JSON body;
- ``empty``: status 200 with ``choices: []``;
- ``blank``: status 200 with an empty message content.

Only a 200 reply with a real translation counts as a *paid* call
(``paid[(source_text, lang)]``); every request is counted in ``requests``.

Lifetime: the server runs in a daemon thread, stops in :meth:`stop` (fixture
teardown), and a daemon timer stops it after ``lifetime`` seconds whatever
happens. ``hold_after``: after that many paid replies every further request is
held without reply (until stop), so a test can kill a client at a moment when
every paid reply has been delivered.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_KINDS = ("429", "500", "hang", "malformed", "empty", "blank")
_INTO = re.compile(r"\binto ([A-Z][a-z]+(?: [A-Z][a-z]+)*)")


def _language_codes() -> dict[str, str]:
    from workflow_scripts.languages import ISO_639_1

    return {name.replace("_", " "): code for code, name in ISO_639_1.items()}


class FakeOpenAI:
    """The loopback server (see the module docstring)."""

    def __init__(
        self,
        references: Mapping[str, Mapping[str, str]] | None = None,
        api_key: str = "sk-test-secret",
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        schedule: Mapping[tuple[str, str], Sequence[str | None]] | None = None,
        seed: int = 0,
        latency: float = 0.0,
        hang_seconds: float = 3.0,
        retry_after: str = "1",
        retry_after_ms: int | None = 50,
        lifetime: float = 120.0,
        hold_after: int | None = None,
        model: str = "fake-translator",
    ):
        unknown = set(fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.references = references or {}
        self.api_key = api_key
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.schedule = dict(schedule or {})
        self.seed = seed
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.lifetime = lifetime
        self.hold_after = hold_after
        self.model = model
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()  # per item, every request
        self.paid: Counter[tuple[str, str]] = Counter()  # per item, successful replies
        self.faults: Counter[str] = Counter()
        self.unauthorized = 0
        self.bodies: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self._codes = _language_codes()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeOpenAI:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._get(self)

            def do_POST(self) -> None:
                server._post(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); held and hanging requests are released."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def n_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def n_paid(self) -> int:
        return sum(self.paid.values())

    def duplicates(self) -> int:
        """Paid replies beyond the first one of each item."""
        return sum(n - 1 for n in self.paid.values() if n > 1)

    # ------------------------------------------------------------------ handlers
    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        if h.headers.get("Authorization") == f"Bearer {self.api_key}":
            return True
        with self.lock:
            self.unauthorized += 1
        self._json(h, 401, {"error": {"message": "Incorrect API key provided.", "code": 401}})
        return False

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path.rstrip("/") != "/v1/models":
            self._json(h, 404, {"error": {"message": f"no route {h.path}"}})
        elif self._authorized(h):
            self._json(h, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", 0))) or b"{}")
        if h.path.rstrip("/") != "/v1/chat/completions":
            self._json(h, 404, {"error": {"message": f"no route {h.path}"}})
            return
        if not self._authorized(h):
            return
        content = next(
            (m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), ""
        )
        source = content.rsplit("\n\n", 1)[-1]
        match = _INTO.search(content)
        lang = self._codes.get(match.group(1), "??") if match else "??"
        key = (source, lang)
        with self.lock:
            self.requests[key] += 1
            attempt = self.requests[key]
            self.bodies.append(body)
            hold = self.hold_after is not None and self.n_paid >= self.hold_after
        if hold:
            self.stopping.wait(self.lifetime)
            return
        if self.latency:
            time.sleep(self.latency)
        fault = self._fault(key, attempt)
        if fault is not None:
            with self.lock:
                self.faults[fault] += 1
            self._fail(h, fault)
            return
        text = self.references.get(source, {}).get(lang, f"<{lang}> {source}")
        reply = self._completion(body, content, text)
        with self.lock:
            if self.hold_after is not None and self.n_paid >= self.hold_after:
                hold = True
            else:
                self.paid[key] += 1
        if hold:
            self.stopping.wait(self.lifetime)
            return
        self._json(h, 200, reply)

    def _fault(self, key: tuple[str, str], attempt: int) -> str | None:
        planned = self.schedule.get(key)
        if planned is not None:
            return planned[attempt - 1] if attempt <= len(planned) else None
        if not self.fault_rate:
            return None
        digest = hashlib.sha256(f"{self.seed}|{key}|{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self.fault_rate:
            return None
        return self.fault_kinds[int.from_bytes(digest[8:12], "big") % len(self.fault_kinds)]

    def _fail(self, h: BaseHTTPRequestHandler, fault: str) -> None:
        if fault == "429":
            headers = {"Retry-After": self.retry_after}
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = str(self.retry_after_ms)
            message = {"error": {"message": "Rate limit reached", "type": "requests"}}
            self._json(h, 429, message, headers)
        elif fault == "500":
            self._json(h, 500, {"error": {"message": "The server had an error"}})
        elif fault == "hang":
            self.stopping.wait(self.hang_seconds)
            h.close_connection = True
        elif fault == "malformed":
            self._raw(h, 200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess')
        elif fault == "empty":
            empty = {"id": "x", "object": "chat.completion", "created": 0, "model": self.model}
            self._json(h, 200, {**empty, "choices": []})
        elif fault == "blank":
            reply = self._completion({}, "", "")
            self._json(h, 200, reply)

    def _completion(self, body: Mapping[str, Any], content: str, text: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(content) // 4)
        completion_tokens = max(1, len(text) // 4) if text else 0
        return {
            "id": f"chatcmpl-{hashlib.sha1(content.encode()).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # ------------------------------------------------------------------ replies
    @staticmethod
    def _json(
        h: BaseHTTPRequestHandler,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        FakeOpenAI._raw(h, status, json.dumps(payload).encode(), headers)

    @staticmethod
    def _raw(
        h: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            pass


def serve_forever(**kwargs: Any) -> None:  # pragma: no cover - manual use
    """Run a server in the foreground (``python tests/openai_server.py``), printing its URL."""
    with FakeOpenAI(**kwargs) as server:
        print(server.base_url, flush=True)
        server.stopping.wait()


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    serve_forever(lifetime=float(sys.argv[1]) if len(sys.argv) > 1 else 600)
