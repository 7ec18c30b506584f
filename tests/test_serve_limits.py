"""`reflectevo serve` protects itself: body size (413), prompt length (400), requests in flight (503).

Servers bind port 0 on 127.0.0.1 in a thread of the test process; the model is the synthetic tiny-random
preset with a 512-token context, or a backend without a model that waits where a test needs it to.
Each test checks that the server still answers the next request after the one it refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from reflectevo.sampling import Generation, Sampling
from reflectevo.serve import MIB, CompletionServer, Limits, PromptGauge, make_server, start_in_thread

CONTEXT = 512


def _post(url: str, body, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _raw(server: CompletionServer, request: bytes, timeout: float = 10) -> tuple[bytes, socket.socket]:
    """Send `request` on a fresh connection and return the first response's bytes (headers + body)."""
    host, port = server.server_address[:2]
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                      b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest, sock


def _normal(server: CompletionServer) -> None:
    status, body, _ = _post(server.url + "/completions", {"model": "tiny-random", "prompt": "Hello", "max_tokens": 3,
                                                          "temperature": 0})
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length"), body


@pytest.fixture(scope="module")
def small_server(tiny_preset):
    """tiny-random with a 512-token context and a 256 KiB body limit."""
    server = make_server("tiny-random", replace(tiny_preset, max_length=CONTEXT), port=0,
                         limits=Limits(max_body_bytes=256 * 1024))
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------------------
# request bodies


def test_an_oversized_body_gets_413_and_the_server_answers_the_next_request(small_server):
    huge = json.dumps({"model": "tiny-random", "prompt": "a " * 500_000}).encode()     # 1 MB against 256 KiB
    status, body, headers = _post(small_server.url + "/completions", huge)
    assert status == 413 and headers.get("Connection") == "close", (status, body)
    assert body["error"]["message"] == ("the request body is 1,000,038 bytes; this server takes at most 262,144 bytes "
                                        "(0.25 MiB, `reflectevo serve --max-body-mb`)")
    _normal(small_server)


def test_the_body_is_refused_by_its_length_before_it_is_read(small_server):
    # headers that announce 100 MB and no body at all: a server that read before refusing would wait
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n")
    t0 = time.perf_counter()
    answer, sock = _raw(small_server, head)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and time.perf_counter() - t0 < 5, answer[:200]
    # a client that asks first (Expect: 100-continue) gets the 413 instead of "100 Continue"
    answer, sock = _raw(small_server, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    _normal(small_server)


def test_a_chunked_body_is_counted_as_it_arrives(small_server):
    def chunked(payload: bytes, size: int = 4096) -> bytes:
        parts = [b"%x\r\n%s\r\n" % (len(payload[i:i + size]), payload[i:i + size]) for i in range(0, len(payload), size)]
        return b"".join(parts) + b"0\r\n\r\n"

    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    ok = json.dumps({"model": "tiny-random", "prompt": "Hello", "max_tokens": 2, "temperature": 0}).encode()
    answer, sock = _raw(small_server, head + chunked(ok))
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and b'"text_completion"' in answer, answer[:300]

    answer, sock = _raw(small_server, head + chunked(b"x" * 400_000))
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"more than 262,144 bytes" in answer, answer[:300]
    _normal(small_server)


def test_a_bad_content_length_is_a_400(small_server):
    answer, sock = _raw(small_server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"is not a length" in answer, answer[:300]
    _normal(small_server)


# --------------------------------------------------------------------------------------------------
# prompts and max_tokens against the context


def _tokens(server: CompletionServer, text: str) -> int:
    return len(server.backend.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_an_over_long_prompt_gets_400_and_the_server_answers_the_next_request(small_server):
    url = small_server.url + "/completions"
    status, body, _ = _post(url, {"model": "tiny-random", "prompt": "a " * 20_000, "max_tokens": 16})
    assert status == 400 and body["error"]["param"] == "prompt"
    assert body["error"]["message"] == (
        "the prompt is too long: this model's context is 512 tokens, so with max_tokens 16 a prompt may have at "
        "most 496 tokens; it has 40,000 characters, more than 496 tokens can spell")
    _normal(small_server)

    # at the boundary: room = 512 - 4 tokens fits, one more token does not (an exact count, under the bound)
    words = 200
    while _tokens(small_server, "a " * words) < CONTEXT - 4:
        words += 1
    fits = "a " * words
    assert _tokens(small_server, fits) == CONTEXT - 4
    status, body, _ = _post(url, {"model": "tiny-random", "prompt": fits, "max_tokens": 4, "temperature": 0})
    assert status == 200 and body["usage"]["prompt_tokens"] == CONTEXT - 4, body
    status, body, _ = _post(url, {"model": "tiny-random", "prompt": ["Hi", fits + "a "], "max_tokens": 4})
    assert status == 400 and body["error"]["message"].startswith("the prompt 2 of 2 is too long") \
        and body["error"]["message"].endswith(f"it has {CONTEXT - 3} tokens"), body
    _normal(small_server)


def test_max_tokens_is_bounded_by_the_context_and_the_default_fits_the_room(small_server):
    url = small_server.url + "/completions"
    status, body, _ = _post(url, {"model": "tiny-random", "prompt": "Hi", "max_tokens": CONTEXT})
    assert status == 400 and body["error"] == {
        "message": "max_tokens is 512, but this model's context is 512 tokens (prompt + completion): at most 511",
        "type": "invalid_request_error", "param": "max_tokens", "code": 400}
    status, body, _ = _post(small_server.url + "/chat/completions",
                            {"model": "tiny-random", "messages": [{"role": "user", "content": "Hi"}],
                             "max_completion_tokens": 10_000})
    assert status == 400 and body["error"]["param"] == "max_completion_tokens", body
    # no max_tokens: the endpoint's default (16 for completions), cut to what the prompt leaves
    words = 200
    while _tokens(small_server, "a " * words) < CONTEXT - 5:
        words += 1
    status, body, _ = _post(url, {"model": "tiny-random", "prompt": "a " * words, "temperature": 0})
    assert status == 200 and body["usage"]["prompt_tokens"] == CONTEXT - 5 and body["usage"]["completion_tokens"] <= 5
    # chat: refused by the characters of its messages before the template is rendered
    status, body, _ = _post(small_server.url + "/chat/completions",
                            {"model": "tiny-random", "messages": [{"role": "user", "content": "b " * 50_000}]})
    assert status == 400 and body["error"]["param"] == "messages" \
        and body["error"]["message"].startswith("the conversation is too long: this model's context is 512 tokens, "
                                                "so with at least 1 completion token a prompt may have at most 511"), body
    _normal(small_server)


class Spy:
    """Wraps a tokenizer and records the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.seen = tokenizer, []

    def get_vocab(self):
        return self.tokenizer.get_vocab()

    def __call__(self, text, **kw):
        self.seen.append(len(text))
        return self.tokenizer(text, **kw)


def test_a_long_prompt_is_never_tokenized_past_the_bound(small_server, monkeypatch):
    spy = Spy(small_server.backend.tokenizer)
    gauge = PromptGauge(spy)
    # the tiny tokenizer's longest entry: the end-of-text token's 13 characters
    assert gauge.chars_per_token == max(map(len, small_server.backend.tokenizer.get_vocab())) == 13
    monkeypatch.setattr(small_server, "gauge", gauge)
    for prompt in ("a " * 100_000, "a " * 3_000, "ab" * 3_000):          # 200 KB; then under the bound, too many tokens
        status, body, _ = _post(small_server.url + "/completions", {"model": "tiny-random", "prompt": prompt,
                                                                     "max_tokens": 16})
        assert status == 400 and body["error"]["param"] == "prompt", body
    assert max(spy.seen) <= gauge.max_chars(CONTEXT - 16) == 496 * 13 and len(spy.seen) == 2


# --------------------------------------------------------------------------------------------------
# requests in flight


class Gate:
    """A backend without a model whose generation waits until the test opens it."""

    name = "gate"

    def __init__(self) -> None:
        self.open = threading.Event()

    def render(self, messages):
        return " | ".join(m["content"] for m in messages)

    def generate(self, prompts, sampling, seeds=None):
        assert self.open.wait(30), "the test never opened the gate"
        return [Generation(f"seed={s}", len(p.split()), 1) for p, s in zip(prompts, seeds)]


def _wait_for(cond, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_beyond_max_in_flight_a_request_gets_503_with_retry_after():
    gate = Gate()
    server = CompletionServer(gate, "tiny-random", limits=Limits(max_in_flight=2))
    start_in_thread(server)
    results: list = []
    body = {"model": "tiny-random", "prompt": "p", "max_tokens": 1}
    try:
        threads = []
        for n in (1, 2):   # one generating (held at the gate), one waiting for the generation lock
            t = threading.Thread(target=lambda: results.append(_post(server.url + "/completions", body)))
            t.start()
            threads.append(t)
            _wait_for(lambda n=n: server._admitted == n)
        status, error, headers = _post(server.url + "/completions", body)
        assert status == 503 and int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) >= 50
        assert error["error"]["type"] == "server_error"
        assert error["error"]["message"].startswith("the server is busy (2 requests in flight, at most 2)")
        with urllib.request.urlopen(server.url.removesuffix("/v1") + "/health", timeout=10) as r:
            assert r.status == 200                                    # health and model lists are never queued
        gate.open.set()
        for t in threads:
            t.join(30)
        assert [r[0] for r in results] == [200, 200] and server.stats["busy"] == 1
        assert _post(server.url + "/completions", body)[0] == 200     # and the next one is answered
    finally:
        gate.open.set()
        server.shutdown()
        server.server_close()


def test_concurrent_clients_beyond_the_limit_are_answered_after_retrying(tiny_preset):
    pytest.importorskip("openai")
    from reflectevo.backends.openai_backend import OpenAIBackend

    class Slow(Gate):
        def generate(self, prompts, sampling, seeds=None):
            time.sleep(0.05)
            return [Generation(f"seed={s}", 1, 1) for s in seeds]

    server = CompletionServer(Slow(), "tiny-random", limits=Limits(max_in_flight=2))
    start_in_thread(server)
    try:
        preset = replace(tiny_preset, backend="openai", api_model="tiny-random", api_concurrency=6, api_retries=8)
        remote = OpenAIBackend("tiny-api", preset, base_url=server.url, backoff=0.01)
        remote.generate(["first"], Sampling(2))          # one timed generation: Retry-After estimates from it
        gens = remote.generate([f"p{i}" for i in range(6)], Sampling(2), seeds=list(range(6)))
        assert [g.text for g in gens] == [f"seed={i}" for i in range(6)]
        assert server.stats["busy"] >= 1, server.stats        # some were refused, and retried after Retry-After
    finally:
        server.shutdown()
        server.server_close()


def test_too_many_prompts_in_one_request_is_a_400():
    server = CompletionServer(Gate(), "tiny-random", limits=Limits(max_prompts=3))
    start_in_thread(server)
    try:
        status, body, _ = _post(server.url + "/completions", {"model": "tiny-random", "prompt": ["a"] * 4})
        assert status == 400 and body["error"]["message"] == ("prompt is a list of 4 prompts; this server takes at "
                                                              "most 3 per request")
    finally:
        server.shutdown()
        server.server_close()


def test_a_body_that_does_not_arrive_in_time_gets_408():
    server = CompletionServer(Gate(), "tiny-random", limits=Limits(read_timeout=0.3))
    start_in_thread(server)
    try:
        head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\""
        answer, sock = _raw(server, head)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.3 s" in answer, answer[:300]
        _wait_for(lambda: server._admitted == 0)      # its place is given back
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------
# the command's flags


def test_the_flags_reach_the_server(monkeypatch):
    from reflectevo.cli import app

    seen = {}

    class Fake:
        url, backends = "http://127.0.0.1:1/v1", {"tiny-random": None}

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            seen["closed"] = True

    def fake_make_server(name, preset, **kw):
        seen.update(kw, context=preset.max_length)
        return Fake()

    monkeypatch.setattr("reflectevo.serve.make_server", fake_make_server)
    res = CliRunner().invoke(app, ["serve", "--model", "tiny-random", "--max-body-mb", "0.5", "--max-in-flight", "3",
                                   "--max-prompts", "5", "--read-timeout", "7"])
    assert res.exit_code == 0, res.output
    assert seen["limits"] == Limits(max_body_bytes=MIB // 2, max_in_flight=3, max_prompts=5, read_timeout=7.0)
    assert seen["closed"] and "limits: context 512 tokens (models.tiny-random.max_length), body 0.5 MiB" in res.output
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--max-body-mb", "--max-in-flight", "--max-prompts", "--read-timeout"):
        assert flag in help_text
