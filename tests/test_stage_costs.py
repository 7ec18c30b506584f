"""Fixed costs a stage need not pay: a train stage that trains nothing (an RL setting left disabled, as in the
default run) writes its card without importing torch, and the process count is known without accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import tiny_params_dict

from reflectevo.training.dist import single_process

ROOT = Path(__file__).resolve().parents[1]


def test_one_process_is_known_from_the_environment_accelerate_reads():
    assert single_process({}) is True
    assert single_process({"WORLD_SIZE": "1", "LOCAL_RANK": "-1"}) is True
    assert single_process({"WORLD_SIZE": "2", "RANK": "1"}) is False          # torchrun / accelerate launch
    assert single_process({"LOCAL_RANK": "0"}) is False                       # a launcher set a rank
    assert single_process({"OMPI_COMM_WORLD_SIZE": "4"}) is False             # mpirun (multi-CPU training)
    assert single_process({"PMI_SIZE": "x"}) is False                         # unreadable: ask accelerate


def test_a_disabled_rl_stage_imports_no_torch(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(ROOT / "params.yaml"), sort_keys=False))
    code = ("import sys\nfrom pathlib import Path\nfrom reflectevo.training.stage import run_train\n"
            f"r = run_train('rloo', Path({str(params)!r}), Path('raw'), 'none', Path('models/rloo'), Path('m.json'))\n"
            "print(r['status'], 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["disabled", "False"]
    assert json.loads((tmp_path / "models/rloo/model_card.json").read_text())["status"] == "disabled"
