"""Worker of tests/test_multiprocess.py: runs `stages/train.py` (its typer app, as `python stages/train.py`
would) once per argument group, in one process of a multi-process launch, so one launch trains many settings.

    accelerate launch --config_file configs/accelerate/multi_cpu.yaml train_many.py <record dir> \\
        <stages/train.py arguments> [--next <stages/train.py arguments> ...]

Test-only additions, nothing else changed: each rank writes its pid (`pid-rank<r>`) and the process roles
`reflectevo.training.dist` reports before any trainer exists (`roles-rank<r>.json`), and after every
`save_model` (every rank calls it) a digest of the weights it trained (per tensor: count, sum, sum of
squares; the LoRA tensors, or every tensor for a full fine-tune) with its loss history into
`<record dir>/<out folder name>[-<role>]-rank<r>.json`. `SLOW_STEP` seconds of sleep after each optimizer step
let a test kill a rank mid-run.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path


def digest(model) -> dict[str, list[float]]:
    """Per trained tensor (LoRA tensors, or all for a full model): [count, sum, sum of squares] in float64."""
    params = dict(model.named_parameters())
    lora = {k: v for k, v in params.items() if "lora_" in k}
    out = {}
    for name, p in sorted((lora or params).items()):
        t = p.detach()
        if hasattr(t, "full_tensor"):   # a DTensor shard (FSDP2)
            t = t.full_tensor()
        t = t.double()
        out[name.replace(".default", "")] = [t.numel(), float(t.sum()), float((t * t).sum())]
    return out


def main() -> None:
    from transformers import Trainer

    record, groups = Path(sys.argv[1]), [[]]
    for arg in sys.argv[2:]:
        if arg == "--next":
            groups.append([])
        else:
            groups[-1].append(arg)
    rank = int(os.environ.get("RANK", "0"))   # set by the launcher (torchrun)
    record.mkdir(parents=True, exist_ok=True)
    (record / f"pid-rank{rank}").write_text(str(os.getpid()))
    from reflectevo.training.dist import is_main_process, num_processes

    # the process roles as the train stage sees them first, before any trainer exists
    (record / f"roles-rank{rank}.json").write_text(json.dumps({"main": is_main_process(), "processes": num_processes()}))

    save = Trainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        save(self, output_dir, _internal_call)
        name = "-".join(Path(output_dir).parts[-2:]) if Path(output_dir).name in ("reflector", "corrector") \
            else Path(output_dir).name
        losses = [h["loss"] for h in self.state.log_history if "loss" in h]
        (record / f"{name}-rank{rank}.json").write_text(json.dumps(
            {"steps": self.state.global_step, "losses": losses, "world_size": self.args.world_size,
             "digest": digest(self.model)}))

    Trainer.save_model = save_model
    slow = float(os.environ.get("SLOW_STEP", "0"))
    if slow:
        import reflectevo.training.run as T  # train_setting's module: its `step_logger` makes each role's callback

        orig = T.step_logger

        def step_logger(live, prefix):
            cb = orig(live, prefix)
            cb.on_step_end = lambda args, state, control, **kw: time.sleep(slow)
            return cb

        T.step_logger = step_logger
    app = runpy.run_path(str(Path(__file__).resolve().parents[2] / "stages" / "train.py"))["app"]
    for argv in groups:
        try:
            app(argv, standalone_mode=False)
        except SystemExit as e:   # friendly_errors: one line, exit 2
            if e.code:
                raise


if __name__ == "__main__":
    main()
