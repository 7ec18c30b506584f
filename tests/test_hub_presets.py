"""Hub presets without the hub: local HF cache first, one short request, else one clear line (exit 2);
and a local copy (`path:`) that runs offline end to end.

The fake hub is a local HTTP server answering HEAD like huggingface.co (`X-Error-Code` headers); the
stage-script tests run against the real endpoint, which this machine cannot reach (CI with network
gets "no repo" for the made-up id instead: the same one line, exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import huggingface_hub.constants
import pytest
import yaml
from helpers import ignore_at_root, tiny_params_dict

from reflectevo.models import hub, load
from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError

ROOT = Path(__file__).resolve().parents[1]
REV = "0123456789abcdef0123456789abcdef01234567"
GHOST = {"source": "hub", "hub_id": "reflectevo-tests/no-such-model", "revision": REV, "path": "", "dtype": "float32"}


def hub_preset(hub_id: str = "acme/tiny", revision: str = REV, **kw) -> ModelPreset:
    return ModelPreset(source="hub", hub_id=hub_id, revision=revision, dtype="float32", **kw)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache; offline mode off; the endpoint a closed local port (fails at once)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_endpoint(monkeypatch, f"http://127.0.0.1:{port}")
    return cache


def put_in_cache(cache: Path, model_dir: Path, hub_id: str = "acme/tiny", revision: str = REV,
                 skip: tuple[str, ...] = ()) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap


def set_endpoint(monkeypatch, url: str) -> None:
    """What HF_ENDPOINT=<url> does when huggingface_hub is imported."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")


def no_probe(*args, **kwargs):
    raise AssertionError("the hub was asked although the local cache has the model")


# --------------------------------------------------------------------------------------------------
# local HF cache


def test_cached_revision_loads_without_the_hub(hf_cache, tiny_model_dir, monkeypatch):
    snap = put_in_cache(hf_cache, tiny_model_dir)
    monkeypatch.setattr(hub, "probe_hub", no_probe)
    preset = hub_preset()
    assert load.resolve_model("p", preset) == str(snap)
    assert load.resolve_model("p", hub_preset(revision="main")) == str(snap)     # a branch, through refs/
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = load.load_tokenizer("p", preset)
    model = load.load_model("p", preset)
    out = model.generate(**tok("Thought:", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1


def test_partial_cache_is_not_used_and_says_so(hf_cache, tiny_model_dir, monkeypatch):
    put_in_cache(hf_cache, tiny_model_dir, skip=("model.safetensors",))     # a download cut short
    folder, why = hub.cached_snapshot("acme/tiny", REV)
    assert folder is None and why == "incomplete: no weight files"
    assert hub.cached_snapshot("acme/tiny", REV, weights=False)[0]       # the tokenizer alone is there
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReflectEvoError, match=r"local HF cache .*: incomplete: no weight files; hub: skipped"):
        load.resolve_model("p", hub_preset())


def test_sharded_snapshot_needs_every_shard(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").write_text("")
    assert hub._missing_files(tmp_path, True) == "lacks model-00002-of-00002.safetensors"
    (tmp_path / "model-00002-of-00002.safetensors").write_text("")
    assert hub._missing_files(tmp_path, True) == ""


def test_offline_mode_never_asks_the_hub(hf_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "probe_hub", no_probe)
    with pytest.raises(ReflectEvoError) as e:
        load.resolve_model("ghost", hub_preset("reflectevo-tests/no-such-model"))
    msg = str(e.value)
    assert "hub: skipped (HF_HUB_OFFLINE=1)" in msg and f"local HF cache {hf_cache}: not there" in msg


def test_a_bad_hub_id_is_one_line(hf_cache):
    with pytest.raises(ReflectEvoError, match="hub_id 'a/b/c' is not a valid Hugging Face repo id"):
        load.resolve_model("p", hub_preset("a/b/c"))


# --------------------------------------------------------------------------------------------------
# the hub probe: one request, no retries, a hard deadline


class FakeHub(BaseHTTPRequestHandler):
    """HEAD /<org>/<name>/resolve/<rev>/config.json like the hub: 200, or 404 with an X-Error-Code."""

    repos: ClassVar[dict[str, str]] = {"acme/tiny": REV}
    silent = False

    def do_HEAD(self):
        if self.silent:
            time.sleep(30)
            return
        parts = self.path.strip("/").split("/")
        repo, rev = "/".join(parts[:2]), parts[3] if len(parts) > 3 else ""
        if repo not in self.repos:
            self.send_response(401)
            self.send_header("X-Error-Code", "RepoNotFound")
        elif rev != self.repos[repo]:
            self.send_response(404)
            self.send_header("X-Error-Code", "RevisionNotFound")
        else:
            self.send_response(200)
            self.send_header("X-Repo-Commit", REV)
            self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(hf_cache, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    set_endpoint(monkeypatch, url)
    yield url
    server.shutdown()
    server.server_close()


def test_hub_that_has_the_model_gets_the_hub_id(fake_hub):
    assert hub.probe_hub("acme/tiny", REV) == ""
    assert load.resolve_model("p", hub_preset()) == "acme/tiny"   # transformers downloads it


def test_hub_answers_are_named(fake_hub):
    assert hub.probe_hub("acme/nothing", REV) == f"{fake_hub}: no repo acme/nothing (or a private one: log in " \
                                                    "with `hf auth login` or HF_TOKEN)"
    assert hub.probe_hub("acme/tiny", "f" * 40) == f"{fake_hub}: acme/tiny has no revision {'f' * 40}"


def test_a_silent_hub_is_given_up_on_at_the_timeout(fake_hub, monkeypatch):
    monkeypatch.setattr(FakeHub, "silent", True)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    t0 = time.perf_counter()
    why = hub.probe_hub("acme/tiny", REV)
    assert time.perf_counter() - t0 < 2.5
    assert why.startswith(f"{fake_hub} unreachable (ReadTimeout") or "no answer within 1 s" in why, why


def test_the_deadline_holds_even_where_the_request_hangs(hf_cache, monkeypatch):
    # name resolution is not covered by the HTTP timeout: the probe abandons its thread at the deadline
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: time.sleep(30))
    t0 = time.perf_counter()
    assert hub.probe_hub("acme/tiny", REV, timeout=0.3) == \
        f"{huggingface_hub.constants.ENDPOINT} gave no answer within 0.3 s"
    assert time.perf_counter() - t0 < 2.0
    assert hub.HUB_TIMEOUT_S == 5.0 and hub.hub_timeout() == 5.0     # the default cap


# --------------------------------------------------------------------------------------------------
# stage scripts and `reflectevo serve`: one line, exit 2, in seconds


def script_env(tmp_path: Path, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))    # an empty Hugging Face cache
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def ghost_params(tmp_path: Path, **sections) -> Path:
    p = tiny_params_dict(ROOT / "params.yaml")
    p["models"]["ghost"] = dict(GHOST)
    p["model"] = "ghost"
    for section, values in sections.items():
        p[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def assert_one_clear_line(res: subprocess.CompletedProcess, seconds: float, preset: str = "ghost") -> str:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    for part in (f"error: models.{preset}: cannot load reflectevo-tests/no-such-model at revision {REV}",
                 "Tried: path: not set; local HF cache ", "; hub: ",
                 f"-S models.{preset}.path=/local/folder", "HF_HOME=", "HF_HUB_OFFLINE=1"):
        assert part in line, (part, line)
    assert seconds < 10, seconds
    return line


@pytest.mark.parametrize("offline", [False, True])
def test_generate_stage_fails_in_seconds_with_one_line(tmp_path, offline):
    params = ghost_params(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"id": "a", "task": "rg/chain_sum", "question": "1+1", "answer": "2"}\n')
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "stages/generate.py"), "--params", str(params), "--sources",
                          str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "raw"), "--summary",
                          str(tmp_path / "gen.json"), "--no-progress"],
                         env=script_env(tmp_path, offline), check=False, capture_output=True, text=True, timeout=60)
    line = assert_one_clear_line(res, time.perf_counter() - t0)
    assert ("hub: skipped (HF_HUB_OFFLINE=1)" in line) == offline
    assert not (tmp_path / "raw").exists() and not (tmp_path / "gen.json").exists()


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_train_and_evaluate_stages_fail_in_seconds_with_one_line(tmp_path, stage):
    params = ghost_params(tmp_path)
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "task": "rg/chain_sum", "question": "1+1", "answer": "2"}\n')
    args = {"train": ["--setting", "sft_qa", "--train-data", items, "--out", tmp_path / "models/sft_qa",
                      "--metrics", tmp_path / "m.json"],
            "evaluate": ["--sources", items, "--models", tmp_path / "models", "--predictions", tmp_path / "p.jsonl",
                         "--metrics", tmp_path / "m.json", "--plots", tmp_path / "plots"]}[stage]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / f"stages/{stage}.py"), "--params", str(params),
                          *map(str, args)], env=script_env(tmp_path), check=False, capture_output=True, text=True,
                         timeout=60)
    assert_one_clear_line(res, time.perf_counter() - t0)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["items.jsonl", "params.yaml"]   # nothing written


def test_curate_judge_preset_fails_in_seconds_with_one_line(tmp_path):
    params = ghost_params(tmp_path, curate={"judge": "ghost"})
    (tmp_path / "raw").mkdir()
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "stages/curate.py"), "--params", str(params), "--raw",
                          str(tmp_path / "raw"), "--out", str(tmp_path / "curated"), "--metrics",
                          str(tmp_path / "cur.json")], env=script_env(tmp_path), check=False, capture_output=True, text=True,
                         timeout=60)
    assert_one_clear_line(res, time.perf_counter() - t0)
    assert not (tmp_path / "curated").exists()


def test_serve_fails_in_seconds_with_one_line(tmp_path):
    params = ghost_params(tmp_path)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "reflectevo.cli", "serve", "--model", "ghost", "--params", str(params),
                          "--port", "0"], env=script_env(tmp_path), check=False, capture_output=True, text=True, timeout=60)
    assert_one_clear_line(res, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# a local copy: a real hub preset with `path:` generates offline


def save_local_copy(tiny_model_dir: Path, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_hub_preset_with_a_local_path_generates_offline(tmp_path, tiny_model_dir):
    from test_stages import run

    preset = "qwen2_5-0_5b-instruct"              # a real preset of params.yaml (source: hub)
    copy = save_local_copy(tiny_model_dir, tmp_path / "local-copy")
    p = tiny_params_dict(ROOT / "params.yaml")
    assert p["models"][preset]["source"] == "hub"
    p["model"] = preset
    p["models"][preset]["path"] = str(copy)       # what `-S models.<preset>.path=<folder>` writes
    p["generate"]["limit"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    r = run("prepare", "--params", params, "--out", tmp_path / "sources")
    assert r.exit_code == 0, r.output
    res = subprocess.run([sys.executable, str(ROOT / "stages/generate.py"), "--params", str(params), "--sources",
                          str(tmp_path / "sources/train.jsonl"), "--out", str(tmp_path / "raw"), "--summary",
                          str(tmp_path / "gen.json"), "--no-progress"],
                         env=script_env(tmp_path, offline=True), check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "gen.json").read_text())
    assert summary["model"] == preset and summary["items"] == 2 and summary["run"]["computed"] == 2
    from reflectevo.episodes.shards import iter_episodes

    episodes = list(iter_episodes(tmp_path / "raw"))
    assert len(episodes) == 2
    for ep in episodes:   # the record names the hub model, never the local folder
        assert ep["model"]["preset"] == preset and ep["model"]["source"] == "Qwen/Qwen2.5-0.5B-Instruct"
        assert str(copy) not in json.dumps(ep)
    assert not (tmp_path / "hf-home").exists()    # nothing was fetched into (or looked up in) a HF cache


@pytest.mark.slow
def test_dvc_exp_run_with_a_local_copy_flag_runs_offline(tmp_path, tiny_model_dir):
    """The README's command, for real: `dvc exp run -S model=<hub preset> -S models.<preset>.path=<folder>`
    in a git copy of the project, HF_HUB_OFFLINE=1 and an empty HF cache (prepare + generate: ~15 s)."""
    preset = "qwen2_5-0_5b-instruct"
    copy = save_local_copy(tiny_model_dir, tmp_path / "local-copy")
    dst = tmp_path / "proj"
    shutil.copytree(ROOT, dst, ignore=ignore_at_root(ROOT, 
        ".git", ".venv", "cache", "tmp", "data", "models", "metrics", "tests", "bench", "__pycache__", "*.egg-info",
        "dvc.lock", "plots", "report", "checkpoints"))
    shutil.copytree(ROOT / "data/imported", dst / "data/imported")   # tracked: generate's import-file folder
    p = tiny_params_dict(dst / "params.yaml", n_train=2, n_test=1)
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**script_env(tmp_path, offline=True), "PYTHONPATH": str(dst), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "ci",
           "GIT_AUTHOR_EMAIL": "ci@example.com", "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "test"],
                 ["dvc", "exp", "run", "generate", "-S", f"model={preset}", "-S", f"models.{preset}.path={copy}",
                  "-S", "generate.limit=2"]):
        res = subprocess.run(args, cwd=dst, env=env, check=False, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    assert "Running stage 'generate'" in res.stdout, res.stdout
    summary = json.loads((dst / "metrics/generate.json").read_text())
    assert summary["model"] == preset and summary["items"] == 2 and summary["run"]["computed"] == 2
    assert yaml.safe_load((dst / "params.yaml").read_text())["models"][preset]["path"] == str(copy)
