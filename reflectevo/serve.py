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
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reflectevo.sampling import Generation, Sampling


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def _number(body: dict, key: str, default: Any, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise RequestError(400, f"{key} must be {kind} in [{lo}, {hi}], got {value!r}", param=key)
    return value


class CompletionServer(ThreadingHTTPServer):
    """Serves one backend under one model name. `stats` counts requests and the most ever in flight."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, backend: Any, model_name: str, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, default_chat_max_tokens: int = 512, quiet: bool = True,
                 others: dict[str, Any] | None = None) -> None:
        self.backend, self.model_name, self.api_key = backend, model_name, api_key or None
        # more models behind the same endpoint, by request `model` name (the adapters of `--adapter`)
        self.backends = {model_name: backend, **(others or {})}
        self.default_chat_max_tokens = default_chat_max_tokens
        self.quiet = quiet
        self.created = int(time.time())
        self.lock = threading.Lock()           # one generation at a time
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "errors": 0}
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
            return (backend if backend is not None else self.backend).generate(prompts, sampling, seeds=seeds)

    # request bodies -> responses -------------------------------------------------------------------
    def _sampling(self, body: dict, default_max: int, max_key: str = "max_tokens") -> tuple[Sampling, int]:
        for key, why in (("stream", "streaming"), ("echo", "echo"), ("logprobs", "logprobs"),
                         ("top_logprobs", "top_logprobs"), ("suffix", "suffix")):
            if body.get(key):
                raise RequestError(400, f"{why} is not supported by this server", param=key)
        if body.get("stop"):
            raise RequestError(400, "stop sequences are not supported by this server", param="stop")
        if _number(body, "n", 1, 1, 1, integer=True) != 1 or _number(body, "best_of", 1, 1, 1, integer=True) != 1:
            raise RequestError(400, "only n=1 is supported", param="n")
        max_tokens = _number(body, max_key, None, 1, 1 << 20, integer=True)
        if max_tokens is None:
            max_tokens = _number(body, "max_tokens", default_max, 1, 1 << 20, integer=True)
        temperature = float(_number(body, "temperature", 1.0, 0.0, 2.0))
        top_p = float(_number(body, "top_p", 1.0, 1e-9, 1.0))
        seed = _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True)
        if seed is None:
            seed = secrets.randbits(31)
        return Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed), seed

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
        sampling, seed = self._sampling(body, default_max=16)
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
        sampling, seed = self._sampling(body, default_max=self.default_chat_max_tokens, max_key="max_completion_tokens")
        prompt = backend.render([{"role": m["role"], "content": m["content"]} for m in messages])
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

    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        if not self.server.quiet:
            super().log_message(format, *args)

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
        try:
            body: dict = {}
            if read_body:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
            route = routes.get(self.path.split("?", 1)[0].rstrip("/"))
            if route is None:
                raise RequestError(404, f"no route {self.command} {self.path}", kind="not_found_error")
            srv.check_request(self)
            if read_body:
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    raise RequestError(400, "the request body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise RequestError(400, "the request body must be a JSON object")
            self._send(200, route(body))
        except RequestError as e:
            with srv._stats_lock:
                srv.stats["errors"] += 1
            self._send(e.status, {"error": {"message": str(e), "type": e.kind, "param": e.param, "code": e.status}})
        except Exception as e:  # noqa: BLE001 - a generation failure: report it, keep serving
            with srv._stats_lock:
                srv.stats["errors"] += 1
            self._send(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error", "param": None,
                                       "code": 500}})
        finally:
            with srv._stats_lock:
                srv.stats["in_flight"] -= 1

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(preset_name: str, preset: Any, host: str = "127.0.0.1", port: int = 0, adapter: Any = None,
                model_name: str | None = None, api_key: str | None = None, quiet: bool = True,
                adapters: Any = ()) -> CompletionServer:
    """Load the preset with the transformers backend and bind (port 0 = any free port; see `.url`).

    The base model is served as `model_name` (default: the preset's hub_id, else its name); each LoRA
    adapter folder of `adapter` / `adapters` is merged into its own copy and served beside it under
    `reflectevo.adapters.served_name` (the name the openai backend asks for when given that adapter)."""
    from reflectevo.adapters import served_name
    from reflectevo.backends.hf import TransformersBackend

    paths = ([adapter] if adapter is not None else []) + list(adapters)
    backend = TransformersBackend(preset_name, preset)
    others = {served_name(preset_name, p): TransformersBackend(preset_name, preset, adapter=p) for p in paths}
    return CompletionServer(backend, model_name or preset.hub_id or preset_name, host=host, port=port,
                            api_key=api_key, quiet=quiet, others=others)


def start_in_thread(server: CompletionServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="reflectevo-serve", daemon=True)
    thread.start()
    return thread
