"""`reflectevo publish` against a local stand-in for the Hub (HF_ENDPOINT on 127.0.0.1) that records requests.

The server answers the calls huggingface_hub makes for create_repo + upload_folder (without hf_xet:
HF_HUB_DISABLE_XET=1): POST /api/repos/create, /api/validate-yaml, /api/<type>s/<id>/preupload/<rev>
("regular" upload for every file) and /api/<type>s/<id>/commit/<rev> (NDJSON: header + base64 files).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from test_cards import _card, _episode

from reflectevo.training.card import write_card

ROOT = Path(__file__).resolve().parents[1]


class Recorder(BaseHTTPRequestHandler):
    requests: list[dict]

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rec = {"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        self.server.requests.append(rec)
        parts = self.path.split("?")[0].strip("/").split("/")
        if self.path == "/api/repos/create":
            req = json.loads(body)
            rid = f"{req['organization']}/{req['name']}"
            prefix = "" if req.get("type") in (None, "model") else f"{req['type']}s/"
            return self._json({"url": f"{self.server.url}/{prefix}{rid}"})
        if self.path == "/api/validate-yaml":
            return self._json({"errors": [], "warnings": []})
        # /api/<type>s/<owner>/<name>/<action>/<revision>
        action = parts[4] if len(parts) == 6 and parts[0] == "api" else None
        if action in self.server.fail:
            return self._json({"error": "Repository storage limit reached"}, 403)
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        if action == "commit":
            return self._json({"commitUrl": f"{self.server.url}/{parts[2]}/{parts[3]}/commit/{'a' * 40}",
                               "commitOid": "a" * 40, "pullRequestUrl": None})
        self._json({"error": f"not served: {self.path}"}, 404)

    def do_GET(self):
        self.server.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
        self._json({"error": "not served"}, 404)

    def _json(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests = []
    server.fail = set()  # actions answered with an error
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def publish(hub, tmp_path, *args, token="hf_test_token"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "reflectevo.cli", "publish", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)


def model_folder(root: Path, setting: str = "two_stage", **card_kw) -> Path:
    """What train@<setting> leaves (card, README cards, adapter configs; weights: a small well-formed file)."""
    import numpy as np
    from safetensors.numpy import save_file

    out = root / "models" / setting
    roles = {"two_stage": ["reflector", "corrector"]}.get(setting, [setting])
    adapters = {r: (r if len(roles) > 1 else ".") for r in roles}
    for sub in adapters.values():
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": "reflectevo-preset:qwen2_5-0_5b-instruct", "peft_type": "LORA", "r": 8}))
        save_file({"lora_A.weight": np.zeros((2, 2), np.float32)}, str(out / sub / "adapter_model.safetensors"))
        (out / sub / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    write_card(out, {**_card("qwen2_5-0_5b-instruct", setting, adapters=adapters), **card_kw})
    return out


def commit_files(req: dict) -> tuple[dict, dict[str, bytes]]:
    lines = [json.loads(x) for x in req["body"].splitlines() if x.strip()]
    header = next(x["value"] for x in lines if x["key"] == "header")
    files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
    return header, files


def test_publish_a_model_folder(hub, tmp_path):
    folder = model_folder(tmp_path)
    res = publish(hub, tmp_path, folder, "--repo-id", "someone/reflectevo-two-stage", "--dataset-repo",
                  "someone/reflectevo-curated", "--message", "two_stage adapters")
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    assert done["private"] is True and done["repo_type"] == "model" and done["commit"] == "a" * 40
    paths = [r["path"].split("?")[0] for r in hub.requests]
    assert paths[0] == "/api/repos/create" and set(paths[1:-2]) == {"/api/validate-yaml"}  # the card's metadata
    assert paths[-2:] == ["/api/models/someone/reflectevo-two-stage/preupload/main",
                          "/api/models/someone/reflectevo-two-stage/commit/main"]
    assert json.loads(hub.requests[1]["body"])["repoType"] == "model"
    assert {r["auth"] for r in hub.requests} == {"Bearer hf_test_token"}
    create = json.loads(hub.requests[0]["body"])
    assert create == {"name": "reflectevo-two-stage", "organization": "someone", "visibility": "private",
                      "type": "model"}
    header, files = commit_files(hub.requests[-1])
    assert header["summary"] == "two_stage adapters"
    assert set(files) == {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    card = ModelCard(files["README.md"].decode())
    assert card.data.datasets == ["someone/reflectevo-curated"] and card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert ('PeftModel.from_pretrained(base, "someone/reflectevo-two-stage", subfolder="reflector", '
            'adapter_name="reflector")') in card.text
    role = ModelCard(files["corrector/README.md"].decode())
    assert 'from_pretrained(base, "someone/reflectevo-two-stage", subfolder="corrector")' in role.text
    assert files["reflector/adapter_model.safetensors"] == (folder / "reflector/adapter_model.safetensors").read_bytes()
    # the local folder is untouched (the cards are re-rendered in a copy)
    assert "someone/" not in (folder / "README.md").read_text()


def test_publish_public_curated_sets_with_the_saved_token(hub, tmp_path):
    from test_stages import run, tiny_params

    eps = [_episode(i, i % 3 == 0, [(f"I mis-added term {i}; recompute each term.", True),
                                   (f"The term {i} was misread entirely.", False)]) for i in range(12)]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/episodes-00000-of-00001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    r = run("curate", "--params", tiny_params(tmp_path), "--raw", tmp_path / "raw", "--out", tmp_path / "curated",
            "--metrics", tmp_path / "cur.json")
    assert r.exit_code == 0, r.output
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home/token").write_text("hf_saved_token")  # where `hf auth login` puts it
    res = publish(hub, tmp_path, tmp_path / "curated", "--repo-id", "someone/curated", "--public", token=None)
    assert res.returncode == 0, res.stderr
    assert json.loads(hub.requests[0]["body"]) == {"name": "curated", "organization": "someone",
                                                   "visibility": "public", "type": "dataset"}
    assert [r["path"] for r in hub.requests][-2:] == ["/api/datasets/someone/curated/preupload/main",
                                                      "/api/datasets/someone/curated/commit/main"]
    assert {r["auth"] for r in hub.requests} == {"Bearer hf_saved_token"}
    _, files = commit_files(hub.requests[-1])
    assert {"README.md", "stats.json", "dplus_train.jsonl", "dpm_eval.jsonl"} <= set(files)
    assert files["README.md"] == (tmp_path / "curated/README.md").read_bytes()  # datasets go as they are


@pytest.mark.parametrize("case, message", [
    ("no_data", 'the card says "no training data" (D+ is empty: no reflection fixed a trial-1 answer)'),
    ("abs_config", "reflector/tokenizer_config.json:1: holds an absolute path '/home/someone/cache/tok'"),
    ("abs_card", "README.md:"),
    ("abs_data_local", "dplus_train.jsonl:2: holds an absolute path"),
    ("training_args", "training_args.bin: holds an absolute path"),
    ("role_folder", "an adapter role's folder; publish the setting's folder"),
    ("no_metadata", "README.md: no Hub metadata block"),
    ("empty_sets", "no `configs:` in its metadata: every set is empty"),
    ("no_token", "no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
    ("bad_repo", "--repo-id: expected owner/name, got 'no-owner'"),
])
def test_publish_refuses_before_any_request(hub, tmp_path, case, message):
    folder = model_folder(tmp_path)
    repo, token = "someone/x", "hf_test_token"
    if case == "no_data":
        folder = model_folder(tmp_path, "one_stage", status="no training data", adapters={},
                              reason="D+ is empty: no reflection fixed a trial-1 answer")
    elif case == "abs_config":
        (folder / "reflector/tokenizer_config.json").write_text('{"name_or_path": "/home/someone/cache/tok"}')
    elif case == "abs_card":
        readme = folder / "README.md"
        readme.write_text(readme.read_text() + f"\nbase loaded from {tmp_path}/base\n")
    elif case in ("abs_data_local", "empty_sets"):
        folder = tmp_path / "curated"
        folder.mkdir()
        (folder / "stats.json").write_text("{}")
        rows = [{"id": "a", "trial1": "see /usr/bin/env python"},  # model text: a path-like string is data
                {"id": "b", "trial1_prompt": f"cached under {Path.home()}/.cache/reflectevo/x"}]
        (folder / "dplus_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        configs = "" if case == "empty_sets" else \
            "configs:\n- config_name: dplus\n  data_files:\n  - split: train\n    path: dplus_train.jsonl\n"
        (folder / "README.md").write_text(f"---\n{configs}tags:\n- reflectevo\n---\n# curated\n")
    elif case == "training_args":
        (folder / "corrector/training_args.bin").write_bytes(b"\x80\x04pickle")
    elif case == "role_folder":
        folder = folder / "reflector"
    elif case == "no_metadata":
        (folder / "README.md").write_text("# two_stage\n")
    elif case == "no_token":
        token = None
    elif case == "bad_repo":
        repo = "no-owner"
    res = publish(hub, tmp_path, folder, "--repo-id", repo, token=token)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and message in res.stderr, res.stderr
    assert hub.requests == []


def test_dry_run_lists_the_files_and_sends_nothing(hub, tmp_path):
    folder = model_folder(tmp_path, "dpo_pm")
    res = publish(hub, tmp_path, folder, "--repo-id", "someone/dpo", "--dry-run")
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    assert done["dry_run"] is True and "adapter_model.safetensors" in done["files"] and hub.requests == []


def test_a_hub_error_is_one_line(hub, tmp_path):
    hub.fail.add("commit")
    res = publish(hub, tmp_path, model_folder(tmp_path), "--repo-id", "someone/x")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"error: {hub.url}: upload to someone/x failed: 403") and "storage limit" in res.stderr
