"""A small OpenAI-compatible server for any model preset, through the transformers backend.

    reflectevo serve --model tiny-random --port 8000            # then OPENAI_BASE_URL=http://127.0.0.1:8000/v1

Endpoints: `POST /v1/completions` (prompt: a string or a list of strings), `POST /v1/chat/completions`
(the preset's chat template is applied here), `GET /v1/models`, `GET /health`. Request and response
bodies follow the OpenAI API: `max_tokens` (chat also `max_completion_tokens`), `temperature` (0 =
greedy; default 1 as in the OpenAI API), `top_p`, `seed` (a sample depends on prompt, seed and sampling
parameters only; no seed = a random one), `n` (1 only), `usage` with prompt/completion token counts and
`finish_reason` (`length` when the budget was used up, else `stop`). Prompts are tokenized without
adding special tokens: the text is the whole prompt. Streaming, `stop`, `logprobs`, `echo` and
`best_of` are refused with HTTP 400 rather than ignored; other unknown fields are ignored.

Correctness first: every request is its own generation call, one at a time under a lock (the model is
not thread-safe); the HTTP side is threaded, so clients may keep several requests in flight. With
`api_key` set, requests need `Authorization: Bearer <key>`. Binds 127.0.0.1 unless told otherwise.

Limits (`Limits`; flags of `reflectevo serve`; docs/serve.md), each checked before the work it guards:
- `--max-body-mb` (8): a larger body gets 413 before it is read (by its Content-Length, or counted while a
  chunked body arrives); the connection is then closed.
- the context, the preset's `max_length` (prompt + completion tokens): `max_tokens` at or above it, or a
  prompt longer than `max_length - max_tokens` tokens, gets 400. A prompt is refused by its length in
  characters when no tokenization could make it fit (no token spells more characters than the
  vocabulary's longest entry), so no more than `max_length` x that many characters is ever tokenized.
  Without `max_tokens` the budget is the endpoint's default, cut to the room the prompt leaves.
- `--max-in-flight` (32): completion requests admitted at once (one generates, the others wait for the
  lock); beyond it 503 with `Retry-After` and `retry-after-ms` (the expected wait, from recent generation times).
- `--max-prompts` (64): prompts in one /v1/completions request.
- `--read-timeout` (60 s): the longest wait for one read from a client; a request body must arrive within
  it (408 otherwise), and an idle keep-alive connection is closed after it.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reflectevo.sampling import Generation, Sampling

MIB = 1 << 20
LINGER_S = 2.0          # after refusing a body unread: how long to drain what the client still sends


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (the flags of `reflectevo serve`)."""

    max_body_bytes: int = 8 * MIB
    max_in_flight: int = 32         # completion requests admitted at once (generating or waiting for the lock)
    max_prompts: int = 64           # prompts in one /v1/completions request
    read_timeout: float = 60.0      # seconds: one socket read, and a whole request body

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_in_flight", "max_prompts", "read_timeout"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.headers = status, kind, param, headers or {}


def _number(body: dict, key: str, default: Any, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise RequestError(400, f"{key} must be {kind} in [{lo}, {hi}], got {value!r}", param=key)
    return value


class PromptGauge:
    """Counts a prompt's tokens, tokenizing no more than the context can hold.

    No token spells more characters than the vocabulary's longest entry (byte-level BPE entries are one
    character per byte, SentencePiece entries one per character), so a prompt of more than
    `limit * chars_per_token` characters has more than `limit` tokens: refused by its length alone."""

    FALLBACK_CHARS_PER_TOKEN = 256   # a tokenizer that does not list its vocabulary

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        try:
            self.chars_per_token = max(map(len, tokenizer.get_vocab())) or self.FALLBACK_CHARS_PER_TOKEN
        except (AttributeError, TypeError, ValueError):
            self.chars_per_token = self.FALLBACK_CHARS_PER_TOKEN
        self._lock = threading.Lock()    # a fast tokenizer is not to be called from two threads at once

    def max_chars(self, limit: int) -> int:
        return limit * self.chars_per_token

    def count(self, text: str, limit: int) -> int | None:
        """The tokens of `text`, or None when its length in characters alone puts it over `limit`."""
        if len(text) > self.max_chars(limit):
            return None
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class CompletionServer(ThreadingHTTPServer):
    """Serves one backend under one model name. `stats` counts requests, the most ever in flight, errors
    and requests refused as busy (503).

    `context` (prompt + completion tokens; the preset's max_length) bounds prompts and `max_tokens`
    when the backend has a tokenizer (`backend.tokenizer`); None: no token limit."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, backend: Any, model_name: str, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, default_chat_max_tokens: int = 512, quiet: bool = True,
                 others: dict[str, Any] | None = None, limits: Limits | None = None,
                 context: int | None = None) -> None:
        self.backend, self.model_name, self.api_key = backend, model_name, api_key or None
        # more models behind the same endpoint, by request `model` name (the adapters of `--adapter`)
        self.backends = {model_name: backend, **(others or {})}
        self.default_chat_max_tokens = default_chat_max_tokens
        self.quiet = quiet
        self.limits = limits or Limits()
        tokenizer = getattr(backend, "tokenizer", None)
        self.context = context if context and tokenizer is not None else None
        self.gauge = PromptGauge(tokenizer) if self.context else None
        self.created = int(time.time())
        self.lock = threading.Lock()           # one generation at a time
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "errors": 0, "busy": 0}
        self._admitted = 0                     # completion requests past admission, not yet answered
        self._generation_s: float | None = None   # recent seconds per generation call (Retry-After's estimate)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    # hooks (tests override them) -------------------------------------------------------------------
    def check_request(self, handler: BaseHTTPRequestHandler) -> None:
        """Raise RequestError to refuse a request before any work (auth lives here)."""
        if self.api_key is None:
            return
        got = handler.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.api_key}".encode()):
            raise RequestError(401, "invalid or missing API key", kind="authentication_error")

    def generate(self, prompts: list[str], sampling: Sampling, seeds: list[int], backend: Any = None) -> list[Generation]:
        with self.lock:
            start = time.perf_counter()
            try:
                return (backend if backend is not None else self.backend).generate(prompts, sampling, seeds=seeds)
            finally:
                took = time.perf_counter() - start
                self._generation_s = took if self._generation_s is None else 0.8 * self._generation_s + 0.2 * took

    # admission -------------------------------------------------------------------------------------
    def admit(self) -> None:
        """Take one of the `max_in_flight` places, or refuse with 503 and a Retry-After estimate."""
        with self._stats_lock:
            if self._admitted >= self.limits.max_in_flight:
                self.stats["busy"] += 1
                # the queue's expected wait; Retry-After in whole seconds (HTTP), retry-after-ms as OpenAI sends it
                per_call = 1.0 if self._generation_s is None else self._generation_s   # 1 s before any is timed
                wait = min(60.0, max(0.05, per_call * self._admitted))
                raise RequestError(503, f"the server is busy ({self._admitted} requests in flight, at most "
                                   f"{self.limits.max_in_flight}); retry after {wait:.2g} s", kind="server_error",
                                   headers={"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(round(wait * 1000))})
            self._admitted += 1

    def release(self) -> None:
        with self._stats_lock:
            self._admitted -= 1

    # request bodies -> responses -------------------------------------------------------------------
    def _sampling(self, body: dict, default_max: int, max_key: str = "max_tokens") -> tuple[Sampling, int, str | None]:
        """(sampling, seed, the key that set max_tokens or None for the default)."""
        for key, why in (("stream", "streaming"), ("echo", "echo"), ("logprobs", "logprobs"),
                         ("top_logprobs", "top_logprobs"), ("suffix", "suffix")):
            if body.get(key):
                raise RequestError(400, f"{why} is not supported by this server", param=key)
        if body.get("stop"):
            raise RequestError(400, "stop sequences are not supported by this server", param="stop")
        if _number(body, "n", 1, 1, 1, integer=True) != 1 or _number(body, "best_of", 1, 1, 1, integer=True) != 1:
            raise RequestError(400, "only n=1 is supported", param="n")
        hi = self.context - 1 if self.context else 1 << 20
        given = next((k for k in (max_key, "max_tokens") if body.get(k) is not None), None)
        max_tokens = default_max
        if given is not None:
            value = body[given]
            if self.context and type(value) is int and value > hi:
                raise RequestError(400, f"{given} is {value}, but this model's context is {self.context} tokens "
                                   f"(prompt + completion): at most {hi}", param=given)
            max_tokens = _number(body, given, None, 1, hi, integer=True)
        temperature = float(_number(body, "temperature", 1.0, 0.0, 2.0))
        top_p = float(_number(body, "top_p", 1.0, 1e-9, 1.0))
        seed = _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True)
        if seed is None:
            seed = secrets.randbits(31)
        return Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed), seed, given

    def _room(self, sampling: Sampling, given: str | None) -> int:
        """Prompt tokens that fit beside the completion: the context minus max_tokens (minus 1 without it)."""
        assert self.context is not None
        return self.context - (sampling.max_new_tokens if given else 1)

    def _too_long(self, what: str, size: str, sampling: Sampling, given: str | None, param: str) -> RequestError:
        room = self._room(sampling, given)
        after = f"{given} {sampling.max_new_tokens}" if given else "at least 1 completion token"
        return RequestError(400, f"{what} is too long: this model's context is {self.context:,} tokens, so with "
                            f"{after} a prompt may have at most {room:,} tokens; it has {size}", param=param)

    def _fit(self, prompts: list[str], sampling: Sampling, given: str | None, param: str, what: str) -> Sampling:
        """Refuse a prompt that leaves no room in the context for the completion (400, one message);
        without an explicit max_tokens, cut the default budget to the room the longest prompt leaves."""
        if self.gauge is None or self.context is None:
            return sampling
        room = self._room(sampling, given)
        longest = 0
        for i, prompt in enumerate(prompts):
            n = self.gauge.count(prompt, room)
            if n is None or n > room:
                which = f"{what} {i + 1} of {len(prompts)}" if len(prompts) > 1 else what
                size = (f"{len(prompt):,} characters, more than {room:,} tokens can spell" if n is None
                        else f"{n:,} tokens")
                raise self._too_long(which, size, sampling, given, param)
            longest = max(longest, n)
        if given:
            return sampling
        return replace(sampling, max_new_tokens=max(1, min(sampling.max_new_tokens, self.context - longest)))

    def _check_model(self, body: dict) -> Any:
        """The backend serving the request's `model` (404 for a name not served here)."""
        model = body.get("model")
        if model not in self.backends:
            raise RequestError(404, f"The model `{model}` does not exist; this server serves "
                               + ", ".join(f"`{m}`" for m in self.backends), kind="not_found_error", param="model")
        return self.backends[model]

    def completions(self, body: dict) -> dict:
        backend = self._check_model(body)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
        if len(prompts) > self.limits.max_prompts:
            raise RequestError(400, f"prompt is a list of {len(prompts)} prompts; this server takes at most "
                               f"{self.limits.max_prompts} per request", param="prompt")
        sampling, seed, given = self._sampling(body, default_max=16)
        sampling = self._fit(prompts, sampling, given, "prompt", "the prompt")
        gens = self.generate(prompts, sampling, [seed] * len(prompts), **self._which(backend))
        choices = [{"index": i, "text": g.text, "logprobs": None, "finish_reason": self._finish(g, sampling)}
                   for i, g in enumerate(gens)]
        return self._envelope("cmpl", "text_completion", choices, gens, body.get("model"))

    def chat_completions(self, body: dict) -> dict:
        backend = self._check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise RequestError(400, "messages must be a non-empty list of {role, content} with string content",
                               param="messages")
        sampling, seed, given = self._sampling(body, default_max=self.default_chat_max_tokens,
                                               max_key="max_completion_tokens")
        if self.gauge is not None and self.context is not None:
            # the template only adds to the messages: too many characters already, refuse before rendering
            room = self._room(sampling, given)
            chars = sum(len(m["content"]) for m in messages)
            if chars > self.gauge.max_chars(room):
                raise self._too_long("the conversation", f"{chars:,} characters of content, more than {room:,} "
                                     "tokens can spell", sampling, given, "messages")
        prompt = backend.render([{"role": m["role"], "content": m["content"]} for m in messages])
        sampling = self._fit([prompt], sampling, given, "messages", "the conversation (with the chat template)")
        (g,) = self.generate([prompt], sampling, [seed], **self._which(backend))
        choice = {"index": 0, "message": {"role": "assistant", "content": g.text}, "logprobs": None,
                  "finish_reason": self._finish(g, sampling)}
        return self._envelope("chatcmpl", "chat.completion", [choice], [g], body.get("model"))

    def _which(self, backend: Any) -> dict[str, Any]:
        # the default model goes through `generate(prompts, sampling, seeds)` (the hook tests override)
        return {} if backend is self.backend else {"backend": backend}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": self.created,
                                            "owned_by": "reflectevo"} for m in self.backends]}

    @staticmethod
    def _finish(g: Generation, sampling: Sampling) -> str:
        return "length" if g.n_new_tokens >= sampling.max_new_tokens else "stop"

    def _envelope(self, prefix: str, obj: str, choices: list[dict], gens: list[Generation],
                  model_name: str | None = None) -> dict:
        model_name = model_name or self.model_name
        prompt_tokens = sum(g.n_prompt_tokens for g in gens)
        completion_tokens = sum(g.n_new_tokens for g in gens)
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()),
                "model": model_name, "choices": choices, "system_fingerprint": None,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


class _Handler(BaseHTTPRequestHandler):
    server: CompletionServer
    protocol_version = "HTTP/1.1"   # keep-alive: the client reuses connections
    server_version = "reflectevo-serve"
    _pending = 0                    # bytes of the request body not read yet; -1: unknown (chunked, bad header)

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout   # every socket read and write of this connection
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        if not self.server.quiet:
            super().log_message(format, *args)

    def handle_expect_100(self) -> bool:
        """A client that asks before sending (`Expect: 100-continue`; curl does for large bodies) learns
        that its body is over the limit without sending it."""
        if self.command == "POST":
            try:
                self._declared_length()
            except RequestError as e:
                self._refuse(e)
                return False
        return super().handle_expect_100()

    def do_GET(self) -> None:  # http.server's naming
        self._dispatch({"/v1/models": lambda _: self.server.models(),
                        "/health": lambda _: {"status": "ok"}}, read_body=False)

    def do_POST(self) -> None:
        self._dispatch({"/v1/completions": self.server.completions,
                        "/v1/chat/completions": self.server.chat_completions}, read_body=True)

    def _dispatch(self, routes: dict, read_body: bool) -> None:
        srv = self.server
        with srv._stats_lock:
            srv.stats["requests"] += 1
            srv.stats["in_flight"] += 1
            srv.stats["max_in_flight"] = max(srv.stats["max_in_flight"], srv.stats["in_flight"])
        admitted = False
        self._pending = 0
        try:
            body: dict = {}
            if read_body:
                self._declared_length()           # 413 by the headers, before any of the body is read
            route = routes.get(self.path.split("?", 1)[0].rstrip("/"))
            if route is None:
                raise RequestError(404, f"no route {self.command} {self.path}", kind="not_found_error")
            srv.check_request(self)
            if read_body:
                srv.admit()                       # 503 beyond max_in_flight, before the body is read
                admitted = True
                raw = self._read_body()
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    raise RequestError(400, "the request body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise RequestError(400, "the request body must be a JSON object")
            self._send(200, route(body))
        except RequestError as e:
            self._refuse(e)
        except Exception as e:  # noqa: BLE001 - a generation failure: report it, keep serving
            with srv._stats_lock:
                srv.stats["errors"] += 1
            self._send(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error", "param": None,
                                       "code": 500}})
        finally:
            if admitted:
                srv.release()
            with srv._stats_lock:
                srv.stats["in_flight"] -= 1
        self._drop_body()

    def _refuse(self, e: RequestError) -> None:
        with self.server._stats_lock:
            self.server.stats["errors"] += 1
        self._send(e.status, {"error": {"message": str(e), "type": e.kind, "param": e.param, "code": e.status}},
                   e.headers)

    # the request body ------------------------------------------------------------------------------
    def _too_big(self, size: str) -> RequestError:
        limit = self.server.limits.max_body_bytes
        return RequestError(413, f"the request body is {size}; this server takes at most {limit:,} bytes "
                            f"({limit / MIB:g} MiB, `reflectevo serve --max-body-mb`)", param=None)

    def _declared_length(self) -> int:
        """The body's length by its headers (-1: chunked), refused over the limit before any of it is read."""
        coding = self.headers.get("Transfer-Encoding", "").strip().lower()
        if coding:
            self._pending = -1
            if coding != "chunked":
                raise RequestError(501, f"Transfer-Encoding {coding!r} is not supported (chunked is)")
            return -1
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._pending = 0
            return 0
        try:
            n = int(raw)
        except ValueError:
            n = -1
        if n < 0:
            self._pending = -1
            raise RequestError(400, f"Content-Length {raw[:40]!r} is not a length")
        self._pending = n
        if n > self.server.limits.max_body_bytes:
            raise self._too_big(f"{n:,} bytes")
        return n

    def _read_body(self) -> bytes:
        """The whole body (within the limit and `read_timeout`), counted as it arrives when chunked."""
        limits = self.server.limits
        deadline = time.monotonic() + limits.read_timeout
        try:
            data = self._read_chunked(deadline) if self._pending < 0 else self._read_exact(self._pending, deadline)
        except TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {limits.read_timeout:g} s") from None
        self._pending = 0
        return data

    def _read_exact(self, n: int, deadline: float, keep: bool = True) -> bytes:
        buf = bytearray()
        got = 0
        while got < n:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(n - got, 1 << 16))
            if not chunk:
                raise RequestError(400, f"the request body ended after {got:,} of {n:,} bytes")
            got += len(chunk)
            if keep:
                buf += chunk
        return bytes(buf)

    def _read_chunked(self, deadline: float) -> bytes:
        limit = self.server.limits.max_body_bytes
        buf = bytearray()
        while True:
            line = self.rfile.readline(1024)          # size in hex [; extensions] CRLF
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0 or not line.endswith(b"\n"):
                raise RequestError(400, "the chunked request body is malformed")
            if size == 0:
                break
            if len(buf) + size > limit:
                raise self._too_big(f"more than {limit:,} bytes")
            buf += self._read_exact(size, deadline)
            if self._read_exact(2, deadline) != b"\r\n":
                raise RequestError(400, "the chunked request body is malformed")
        for _ in range(64):                           # trailer fields, up to the empty line
            if self.rfile.readline(1024).strip() == b"":
                return bytes(buf)
        raise RequestError(400, "the chunked request body is malformed")

    def _drop_body(self) -> None:
        """What is left of a body the answer did not need: read and thrown away when its length is known and
        within the limit (the connection stays open); else the connection closes, after draining what the
        client still sends for a moment (so that it reads the answer rather than a connection reset)."""
        n, self._pending = self._pending, 0
        if n == 0:
            return
        limits = self.server.limits
        if 0 < n <= limits.max_body_bytes:
            try:
                self._read_exact(n, time.monotonic() + limits.read_timeout, keep=False)
                return
            except (OSError, RequestError):
                pass
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            deadline = time.monotonic() + LINGER_S
            while time.monotonic() < deadline and self.rfile.read1(1 << 16):
                pass
        except OSError:
            pass

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not 0 <= self._pending <= self.server.limits.max_body_bytes:
            self.send_header("Connection", "close")   # a body that will not be read: this connection ends
        self.end_headers()
        self.wfile.write(data)


def make_server(preset_name: str, preset: Any, host: str = "127.0.0.1", port: int = 0, adapter: Any = None,
                model_name: str | None = None, api_key: str | None = None, quiet: bool = True,
                adapters: Any = (), limits: Limits | None = None) -> CompletionServer:
    """Load the preset with the transformers backend and bind (port 0 = any free port; see `.url`).

    The base model is served as `model_name` (default: the preset's hub_id, else its name); each LoRA
    adapter folder of `adapter` / `adapters` is merged into its own copy and served beside it under
    `reflectevo.adapters.served_name` (the name the openai backend asks for when given that adapter).
    Prompts are bounded by the preset's `max_length` (prompt + completion tokens), requests by `limits`."""
    from reflectevo.adapters import served_name
    from reflectevo.backends.hf import TransformersBackend

    paths = ([adapter] if adapter is not None else []) + list(adapters)
    backend = TransformersBackend(preset_name, preset)
    others = {served_name(preset_name, p): TransformersBackend(preset_name, preset, adapter=p) for p in paths}
    return CompletionServer(backend, model_name or preset.hub_id or preset_name, host=host, port=port,
                            api_key=api_key, quiet=quiet, others=others, limits=limits, context=preset.max_length)


def start_in_thread(server: CompletionServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="reflectevo-serve", daemon=True)
    thread.start()
    return thread
