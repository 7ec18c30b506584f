"""OpenAI-compatible endpoint backend: `vllm serve`, TGI, the llama.cpp server, `reflectevo serve`, or a
hosted API (teacher reflections, judging).

Where it talks to (never written into params files with a key):

- base URL: `models.<preset>.api_base_url`, else `$REFLECTEVO_OPENAI_BASE_URL`, else `$OPENAI_BASE_URL`.
  A URL without a path gets `/v1` appended (`http://127.0.0.1:8000` -> `http://127.0.0.1:8000/v1`).
- key: the environment variable named by `api_key_env` (default `OPENAI_API_KEY`); empty is fine for
  local servers (the client then sends the placeholder `EMPTY`, as vLLM's docs do).
- model name: `api_model`, else `hub_id`, else the preset name.

Two request modes (`api_mode`), both storing prompts exactly as sent:

- `completions` (`/v1/completions`): the chat template is applied here, with the preset's own tokenizer,
  so `render` returns the same string the transformers backend would and the record holds the exact
  text the server received. vLLM's completions endpoint adds special tokens (a second BOS for templates
  that start with one) unless told not to: give such a server `api_extra: {add_special_tokens: false}`.
- `chat` (`/v1/chat/completions`), for hosted APIs without a completions endpoint or presets without a
  local tokenizer (`source: api`): the server applies its template, and `render` returns the message
  list as JSON (`json.dumps`), which is what is sent and what records store.
- `auto` (default): chat for `source: api`, completions otherwise.

Requests: one per prompt, each with its own `seed` (so a sample depends on its prompt, seed and sampling
parameters only, given a server that honours seeds), at most `concurrency` in flight (a thread pool:
`api_concurrency`, else `$REFLECTEVO_OPENAI_CONCURRENCY`, else 8). Retries are ours, not the client's
(`max_retries=0` on the client): on HTTP 408/409/429/5xx and connection errors or timeouts, up to
`api_retries` more attempts with exponential backoff (`backoff` x 2^n seconds, jittered, capped at
`max_backoff`; a `Retry-After` header wins); other HTTP errors fail at once. Either way the failure is one
`ReflectEvoError` naming the URL. Token counts come from the response's `usage`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from reflectevo.sampling import Generation, Sampling, finish_text, prompt_seeds
from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError

ENV_BASE_URLS = ("REFLECTEVO_OPENAI_BASE_URL", "OPENAI_BASE_URL")
ENV_CONCURRENCY = "REFLECTEVO_OPENAI_CONCURRENCY"
DEFAULT_CONCURRENCY = 8
NO_KEY = "EMPTY"          # the client refuses an empty key; local servers ignore this one
RETRY_STATUS = frozenset({408, 409, 429})


def resolve_base_url(preset_name: str, preset: ModelPreset) -> str:
    url = preset.api_base_url or next((os.environ[v] for v in ENV_BASE_URLS if os.environ.get(v)), "")
    if not url:
        raise ReflectEvoError(f"models.{preset_name}: backend openai needs an endpoint: set api_base_url, "
                              f"${ENV_BASE_URLS[0]} or ${ENV_BASE_URLS[1]} (e.g. http://127.0.0.1:8000/v1)")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ReflectEvoError(f"models.{preset_name}: endpoint {redact_url(url)!r} is not an http(s) URL")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def redact_url(url: str) -> str:
    """scheme://host[:port]/path: no user:password, query string or fragment (they may carry secrets)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{p.port}" if p.port else ""
    except ValueError:
        port = ""
    return urlunsplit((p.scheme, host + port, p.path.rstrip("/"), "", ""))


def resolve_concurrency(preset: ModelPreset) -> int:
    if preset.api_concurrency > 0:
        return preset.api_concurrency
    raw = os.environ.get(ENV_CONCURRENCY, "").strip()
    if not raw:
        return DEFAULT_CONCURRENCY
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ReflectEvoError(f"${ENV_CONCURRENCY}: expected a positive integer, got {raw!r}")
    return n


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:  # an HTTP date: fall back to our own backoff
            return None
    return None


def _error_text(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):  # the client passes the JSON's "error" object (or the whole body)
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else inner
        if msg:
            return str(msg)[:300]
    return str(getattr(err, "message", err))[:300]


class OpenAIBackend:
    name = "openai"
    dtype = "remote"   # recorded as the resolved dtype: the server decides
    sampler = "endpoint-request-seed-v1"   # the server draws from each request's seed (episode keys)

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: str | Path | None = None, *,
                 base_url: str | None = None, api_key: str | None = None, concurrency: int | None = None,
                 retries: int | None = None, backoff: float = 1.0, max_backoff: float = 60.0,
                 timeout: float = 600.0, tokenizer: Any = None) -> None:
        try:
            import openai
        except ImportError:
            raise ReflectEvoError("backend openai needs the client: pip install 'reflectevo[openai]'") from None
        self.preset_name = preset_name
        self.base_url = resolve_base_url(preset_name, preset) if base_url is None else base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)
        self.key_env = preset.api_key_env
        key = os.environ.get(preset.api_key_env, "") if api_key is None else api_key
        self.model = preset.api_model or preset.hub_id or preset_name
        # an adapter is not loaded here: the server serves it under `served_name` (its content hash), e.g.
        # `reflectevo serve --adapter PATH` or `vllm serve BASE --enable-lora --lora-modules NAME=PATH`
        self.adapter = None if adapter is None else str(adapter)
        if adapter is not None:
            from reflectevo.adapters import served_name

            self.model = served_name(preset_name, adapter)
        self.mode = preset.api_mode if preset.api_mode != "auto" else ("chat" if preset.source == "api" else "completions")
        self.extra = dict(preset.api_extra)
        self.concurrency = concurrency or resolve_concurrency(preset)
        self.retries = preset.api_retries if retries is None else retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.tokenizer = tokenizer
        if self.mode == "completions" and tokenizer is None:
            from reflectevo.models.load import load_tokenizer

            try:
                self.tokenizer = load_tokenizer(preset_name, preset)
            except ReflectEvoError:
                raise
            except Exception as e:  # noqa: BLE001 - hub unreachable, missing files...: one clear line
                raise ReflectEvoError(
                    f"models.{preset_name}: api_mode completions applies the chat template here, but the "
                    f"tokenizer did not load ({type(e).__name__}: {e}); set api_mode: chat to let the server "
                    "apply it") from None
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or NO_KEY, max_retries=0, timeout=timeout)

    # ---------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What identifies this backend in records: endpoint without credentials, model name, mode."""
        return {"backend": self.name, "endpoint": self.shown_url, "api_model": self.model, "api_mode": self.mode}

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.mode == "chat":
            return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        seeds = prompt_seeds(prompts, sampling, seeds)
        if not prompts:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)), thread_name_prefix="openai")
        try:
            futures = [pool.submit(self._one, p, sampling, int(s)) for p, s in zip(prompts, seeds)]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure stops what has not started

    def close(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------------------------------------
    def _one(self, prompt: str, sampling: Sampling, seed: int) -> Generation:
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": sampling.max_new_tokens,
                                  "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed, "n": 1}
        if sampling.stop:   # the answer pattern (stop_regex) is applied to the text afterwards
            kwargs["stop"] = list(sampling.stop)
        if self.extra:
            kwargs["extra_body"] = self.extra
        if self.mode == "chat":
            try:
                messages = json.loads(prompt)
                ok = isinstance(messages, list) and all(isinstance(m, dict) and "role" in m for m in messages)
            except ValueError:
                ok = False
            if not ok:
                raise ReflectEvoError("backend openai (api_mode chat): a prompt must be the JSON message list "
                                      f"that render() returns, got {prompt[:60]!r}")
            resp = self._call(self.client.chat.completions.create, "chat/completions", messages=messages, **kwargs)
            text = resp.choices[0].message.content or ""
        else:
            resp = self._call(self.client.completions.create, "completions", prompt=prompt, **kwargs)
            text = resp.choices[0].text or ""
        # "length", or "stop": EOS or one of our stop strings (the API does not say which, nor return it)
        finish = getattr(resp.choices[0], "finish_reason", None)
        natural = "length" if finish == "length" else ("stop" if sampling.stop and finish == "stop" else "eos")
        text, reason = finish_text(text, sampling, natural)
        usage = getattr(resp, "usage", None)
        if usage is not None:
            return Generation(text, int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0), reason)
        if self.tokenizer is not None:  # a server that sends no usage: count with the preset's tokenizer
            def count(s: str) -> int:
                return len(self.tokenizer(s, add_special_tokens=False)["input_ids"])

            return Generation(text, count(prompt), count(text), reason)
        return Generation(text, 0, 0, reason)

    def _call(self, fn, endpoint: str, **kwargs: Any) -> Any:
        import openai

        url = f"{self.shown_url}/{endpoint}"
        delay = self.backoff
        attempt, detail = 0, ""
        for attempt in range(1, self.retries + 2):
            try:
                return fn(**kwargs)
            except openai.APIStatusError as e:
                status = e.status_code
                detail = f"HTTP {status}: {_error_text(e)}"
                if not (status in RETRY_STATUS or status >= 500):
                    hint = f" (the key comes from ${self.key_env})" if status in (401, 403) else ""
                    raise ReflectEvoError(f"backend openai: {url} answered {detail}{hint}") from None
                wait = _retry_after(e.response)
            except openai.APIConnectionError as e:  # refused, reset, DNS, timeout
                detail = f"{type(e).__name__}: {e}"
                wait = None
            if attempt > self.retries:
                break
            time.sleep(min(self.max_backoff, wait if wait is not None else delay * random.uniform(0.5, 1.0)))
            delay *= 2
        raise ReflectEvoError(f"backend openai: {url} failed after {attempt} attempt(s); last error: {detail}")
