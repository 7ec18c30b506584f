"""OpenAI backend against a real HTTP server on 127.0.0.1 (reflectevo.serve), through the real `openai` client.

The served model is the synthetic tiny-random preset (junk output): the tests compare outputs, they
do not judge them. Servers bind port 0 (any free port) and run in a thread of the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers import tiny_params_dict
from typer.testing import CliRunner

from reflectevo.sampling import Generation, Sampling
from reflectevo.config.presets import ModelPreset
from reflectevo.config.loader import from_dict
from reflectevo.errors import ReflectEvoError

pytest.importorskip("openai")

from reflectevo.backends.openai_backend import OpenAIBackend, _retry_after, redact_url, resolve_base_url
from reflectevo.serve import CompletionServer, RequestError, make_server, start_in_thread

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [[{"role": "user", "content": "What is 2 + 3?"}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is every cat an animal?"}],
            [{"role": "user", "content": "Count the letters in the word reflection, then check the count."}]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("REFLECTEVO_OPENAI_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "REFLECTEVO_OPENAI_CONCURRENCY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tiny_server(tiny_preset):
    server = make_server("tiny-random", tiny_preset, port=0)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def local(tiny_preset):
    from reflectevo.backends.hf import TransformersBackend

    return TransformersBackend("tiny-random", tiny_preset)


def client_preset(tiny_preset, **kw) -> ModelPreset:
    return replace(tiny_preset, backend="openai", api_model="tiny-random", **kw)


def serve(server: CompletionServer) -> CompletionServer:
    start_in_thread(server)
    return server


class SlowEcho:
    """A server-side backend without a model: sleeps, then answers with the seed it was given."""

    name = "slow-echo"

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay

    def render(self, messages):
        return " | ".join(m["content"] for m in messages)

    def generate(self, prompts, sampling, seeds=None):
        time.sleep(self.delay)
        return [Generation(f"seed={s} T={sampling.temperature}", len(p.split()), 3) for p, s in zip(prompts, seeds)]


# --------------------------------------------------------------------------------------------------
# generation through the endpoint


def test_greedy_completions_equal_the_transformers_backend(tiny_server, local, tiny_preset):
    remote = OpenAIBackend("tiny-api", client_preset(tiny_preset), base_url=tiny_server.url)
    assert remote.mode == "completions"
    prompts = [remote.render(m) for m in MESSAGES]
    assert prompts == [local.render(m) for m in MESSAGES]          # client-side template = the local one
    sampling = Sampling(max_new_tokens=10)
    got, want = remote.generate(prompts, sampling), local.generate(prompts, sampling)
    assert [g.text for g in got] == [w.text for w in want]
    assert [(g.n_prompt_tokens, g.n_new_tokens) for g in got] == [(w.n_prompt_tokens, w.n_new_tokens) for w in want]


def test_seeds_are_passed_through_per_prompt(tiny_server, local, tiny_preset):
    remote = OpenAIBackend("tiny-api", client_preset(tiny_preset), base_url=tiny_server.url)
    p = remote.render(MESSAGES[0])
    sampling = Sampling(max_new_tokens=12, temperature=1.0, seed=0)
    a, b, c = remote.generate([p, p, p], sampling, seeds=[7, 7, 8])
    assert a.text == b.text != c.text
    (ref,) = local.generate([p], sampling, seeds=[7])                 # the sample is the prompt's + seed's only
    assert a.text == ref.text


def test_chat_mode_renders_json_and_the_server_applies_the_template(tiny_server, local, tiny_preset):
    remote = OpenAIBackend("tiny-api", client_preset(tiny_preset, api_mode="chat"), base_url=tiny_server.url)
    prompts = [remote.render(m) for m in MESSAGES]
    assert [json.loads(p) for p in prompts] == MESSAGES               # stored exactly as sent
    got = remote.generate(prompts, Sampling(max_new_tokens=8))
    want = local.generate([local.render(m) for m in MESSAGES], Sampling(max_new_tokens=8))
    assert [g.text for g in got] == [w.text for w in want]
    with pytest.raises(ReflectEvoError, match="JSON message list"):
        remote.generate(["not json"], Sampling(max_new_tokens=2))


def test_concurrency_is_bounded(tiny_preset, monkeypatch):
    server = serve(CompletionServer(SlowEcho(0.05), "tiny-random"))
    try:
        monkeypatch.setenv("REFLECTEVO_OPENAI_CONCURRENCY", "3")
        remote = OpenAIBackend("tiny-api", client_preset(tiny_preset), base_url=server.url)
        assert remote.concurrency == 3
        out = remote.generate([f"prompt {i}" for i in range(12)], Sampling(4, temperature=0.5), seeds=range(100, 112))
        assert [g.text for g in out] == [f"seed={s} T=0.5" for s in range(100, 112)]   # order kept, seeds per prompt
        assert server.stats["requests"] == 12 and server.stats["max_in_flight"] == 3
        # the preset field wins over the environment
        assert OpenAIBackend("tiny-api", client_preset(tiny_preset, api_concurrency=5), base_url=server.url).concurrency == 5
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------
# retries and failures


class FlakyServer(CompletionServer):
    """Answers 503 to the first `fail` requests (all of them with fail=-1)."""

    def __init__(self, *a, fail: int, **kw):
        super().__init__(*a, **kw)
        self.fail, self.seen = fail, 0

    def check_request(self, handler):
        self.seen += 1
        if self.fail < 0 or self.seen <= self.fail:
            raise RequestError(503, "overloaded, try later", kind="server_error")


def test_retries_with_backoff_until_success(tiny_preset):
    server = serve(FlakyServer(SlowEcho(0), "tiny-random", fail=2))
    try:
        remote = OpenAIBackend("tiny-api", client_preset(tiny_preset, api_retries=3), base_url=server.url, backoff=0.01)
        (g,) = remote.generate(["p"], Sampling(4), seeds=[1])
        assert g.text == "seed=1 T=0.0" and server.seen == 3
    finally:
        server.shutdown()
        server.server_close()


def test_permanent_failure_names_the_url_after_n_attempts(tiny_preset):
    server = serve(FlakyServer(SlowEcho(0), "tiny-random", fail=-1))
    try:
        remote = OpenAIBackend("tiny-api", client_preset(tiny_preset, api_retries=2), base_url=server.url, backoff=0.01)
        with pytest.raises(ReflectEvoError) as e:
            remote.generate(["p"], Sampling(4))
        assert f"{server.url}/completions failed after 3 attempt(s)" in str(e.value)
        assert "HTTP 503: overloaded, try later" in str(e.value) and server.seen == 3
    finally:
        server.shutdown()
        server.server_close()


def test_connection_refused_is_retried_then_reported(tiny_preset):
    import socket

    with socket.socket() as s:        # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    remote = OpenAIBackend("tiny-api", client_preset(tiny_preset, api_retries=1), base_url=url, backoff=0.01)
    with pytest.raises(ReflectEvoError, match=rf"{url}/completions failed after 2 attempt\(s\); last error: APIConnectionError"):
        remote.generate(["p"], Sampling(4))


def test_client_errors_fail_at_once(tiny_server, tiny_preset):
    before = tiny_server.stats["requests"]
    wrong = replace(client_preset(tiny_preset), api_model="no-such-model", api_retries=4)
    remote = OpenAIBackend("tiny-api", wrong, base_url=tiny_server.url, backoff=5.0)
    with pytest.raises(ReflectEvoError, match=r"completions answered HTTP 404: The model `no-such-model` does not exist"):
        remote.generate(["p"], Sampling(4))
    assert tiny_server.stats["requests"] == before + 1               # no retry of a 4xx


def test_retry_after_header_is_read():
    class R:
        def __init__(self, h):
            self.headers = h

    assert _retry_after(R({"retry-after": "2"})) == 2.0 and _retry_after(R({"retry-after-ms": "250"})) == 0.25
    assert _retry_after(R({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None and _retry_after(R({})) is None


# --------------------------------------------------------------------------------------------------
# configuration: environment, key, validation, dispatch


def test_base_url_and_key_come_from_the_environment(tiny_preset, monkeypatch):
    server = serve(CompletionServer(SlowEcho(0), "tiny-random", api_key="s3cret-key"))
    try:
        host_port = server.url.removesuffix("/v1")
        monkeypatch.setenv("OPENAI_BASE_URL", "http://192.0.2.1:9/v1")          # loses to ours
        monkeypatch.setenv("REFLECTEVO_OPENAI_BASE_URL", host_port)             # no path: /v1 is appended
        monkeypatch.setenv("OPENAI_API_KEY", "s3cret-key")
        remote = OpenAIBackend("tiny-api", client_preset(tiny_preset))
        assert remote.base_url == server.url
        assert remote.generate(["p"], Sampling(2), seeds=[3])[0].text == "seed=3 T=0.0"
        assert "s3cret" not in json.dumps(remote.describe())

        other = OpenAIBackend("tiny-api", client_preset(tiny_preset, api_key_env="JUDGE_KEY", api_retries=0))
        with pytest.raises(ReflectEvoError, match=r"HTTP 401: invalid or missing API key \(the key comes from \$JUDGE_KEY\)"):
            other.generate(["p"], Sampling(2))
        monkeypatch.setenv("JUDGE_KEY", "s3cret-key")
        assert OpenAIBackend("tiny-api", client_preset(tiny_preset, api_key_env="JUDGE_KEY")).generate(["p"], Sampling(2))
    finally:
        server.shutdown()
        server.server_close()


def test_base_url_resolution_and_redaction(tiny_preset, monkeypatch):
    p = client_preset(tiny_preset)
    with pytest.raises(ReflectEvoError, match=r"REFLECTEVO_OPENAI_BASE_URL or \$OPENAI_BASE_URL"):
        resolve_base_url("tiny-api", p)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1/")
    assert resolve_base_url("tiny-api", p) == "https://api.example.com/v1"
    assert resolve_base_url("x", replace(p, api_base_url="http://127.0.0.1:8000")) == "http://127.0.0.1:8000/v1"
    with pytest.raises(ReflectEvoError, match="not an http"):
        resolve_base_url("x", replace(p, api_base_url="127.0.0.1:8000"))
    assert redact_url("https://user:pw@example.com:8443/v1?key=abc#f") == "https://example.com:8443/v1"


def test_presets_for_endpoints_validate(tiny_preset):
    ok = from_dict(ModelPreset, {"source": "api", "backend": "openai", "api_model": "gpt-4o-2024-08-06"}, "models.t")
    from reflectevo.models.fingerprint import model_fingerprint

    assert model_fingerprint("t", ok)["source"] == "api:gpt-4o-2024-08-06"
    for bad, msg in [({"source": "api", "api_model": "m"}, r"models\.t\.backend: a source: api preset runs only"),
                     ({"source": "api", "backend": "openai"}, r"models\.t\.api_model: a source: api preset needs"),
                     ({"source": "api", "backend": "openai", "api_model": "m", "api_mode": "completions"},
                      r"models\.t\.api_mode: completions needs"),
                     ({"source": "tiny-random", "api_mode": "chatty"}, r"unknown api_mode 'chatty'")]:
        with pytest.raises(ReflectEvoError, match=msg):
            from_dict(ModelPreset, bad, "models.t")
    with pytest.raises(ReflectEvoError, match="not a LoRA adapter folder"):   # served by name: its content hash
        OpenAIBackend("t", ok, adapter="models/no-such-adapter", base_url="http://127.0.0.1:1/v1")


def test_make_backend_dispatches_on_the_preset(tiny_server, tiny_preset):
    from reflectevo.backends.registry import BACKENDS
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.backends.registry import make_backend

    assert {"transformers", "vllm", "openai"} <= set(BACKENDS.names())
    api = ModelPreset(source="api", backend="openai", api_model="tiny-random", api_base_url=tiny_server.url)
    b = make_backend("judge-api", api)
    assert isinstance(b, OpenAIBackend) and b.mode == "chat" and b.tokenizer is None
    assert b.describe() == {"backend": "openai", "endpoint": tiny_server.url, "api_model": "tiny-random", "api_mode": "chat"}
    assert isinstance(make_backend("tiny-random", tiny_preset), TransformersBackend)


# --------------------------------------------------------------------------------------------------
# the server itself


def _post(url, body, headers=None):
    req = urllib.request.Request(url, data=body if isinstance(body, bytes) else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_speaks_the_openai_shapes_and_refuses_what_it_cannot_do(tiny_server):
    with urllib.request.urlopen(tiny_server.url + "/models", timeout=30) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny-random"
    status, body = _post(tiny_server.url + "/completions", {"model": "tiny-random", "prompt": ["a", "b c"],
                                                            "max_tokens": 3, "temperature": 0})
    assert status == 200 and body["object"] == "text_completion" and [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    for extra, param in [({"stream": True}, "stream"), ({"n": 2}, "n"), ({"stop": ["\n"]}, "stop"),
                         ({"temperature": 3}, "temperature"), ({"max_tokens": 0}, "max_tokens")]:
        status, body = _post(tiny_server.url + "/completions", {"model": "tiny-random", "prompt": "a", **extra})
        assert status == 400 and body["error"]["param"] == param, (extra, body)
    assert _post(tiny_server.url + "/completions", b"{not json")[0] == 400
    assert _post(tiny_server.url + "/chat/completions", {"model": "tiny-random", "messages": "hi"})[0] == 400


@pytest.mark.slow  # a subprocess: pays the torch/transformers imports again (~7 s)
def test_serve_command_starts_a_server(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reflectevo.cli", "serve", "--model", "tiny-random", "--port", "0",
                             "--params", str(ROOT / "params.yaml")], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 60
        while "serving" not in line and time.time() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "server exited"
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            assert json.loads(r.read())["data"][0]["id"] == "tiny-random"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


# --------------------------------------------------------------------------------------------------
# judging Dpref pairs through the endpoint


def test_curate_judges_through_an_endpoint_and_records_the_judge(tiny_server, tmp_path, monkeypatch):
    from test_curation import _episode
    from test_stages import stage

    p = tiny_params_dict(ROOT / "params.yaml")
    p["models"]["judge-api"] = {"source": "tiny-random", "dtype": "float32", "backend": "openai",
                                "api_model": "tiny-random", "api_mode": "chat", "api_concurrency": 4}
    p["curate"]["judge"] = "judge-api"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    texts = ["I forgot the carry; redo the tens.", "Wrong sign on the second term; flip it.", "Misread seven as one."]
    (tmp_path / "raw").mkdir()
    eps = [_episode(i, False, [(t, True) for t in texts]) for i in range(3)]
    (tmp_path / "raw/episodes-00000-of-00001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    monkeypatch.setenv("REFLECTEVO_OPENAI_BASE_URL", tiny_server.url)
    before = tiny_server.stats["requests"]

    r = CliRunner().invoke(stage("curate"), ["--params", str(params), "--raw", str(tmp_path / "raw"),
                                             "--out", str(tmp_path / "cur"), "--metrics", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "cur/stats.json").read_text())
    j = stats["judge"]
    assert j["preset"] == "judge-api" and j["backend"] == "openai" and j["endpoint"] == tiny_server.url
    assert j["api_model"] == "tiny-random" and j["api_mode"] == "chat" and j["prompt_version"].startswith("judge-v1-")
    assert j["model"]["preset"] == "judge-api"
    n_pairs = stats["counts"]["dpref_train"] + stats["counts"]["dpref_eval"] + stats["drops"].get("judge_inconsistent", 0)
    assert n_pairs == 3 * 3 and tiny_server.stats["requests"] - before == 2 * 9   # both orders of every pair
    rows = [json.loads(x) for s in ("train", "eval") for x in (tmp_path / f"cur/dpref_{s}.jsonl").read_text().splitlines()]
    assert all(row["judge"]["endpoint"] == tiny_server.url and len(row["judge"]["votes"]) == 2 for row in rows)
    card = (tmp_path / "cur/README.md").read_text()
    assert f"endpoint `{tiny_server.url}`" in card and j["prompt_version"] in card
