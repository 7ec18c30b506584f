"""Worker of tests/test_multiprocess.py: one of two ranks (gloo, CPU) that generate with the transformers
backend on the synthetic tiny model sharded by FSDP2 (`fully_shard` on a CPU device mesh, torch 2.13), so
every forward all-gathers the shards from both ranks. Rank 0's rows end sooner than rank 1's, and rank 1
makes one more `generate` call. Mode `synced`: the backend gets a `ForwardSync` (`synced_forwards`); mode
`plain`: it does not. Writes <out>/rank<r>-<mode>.json when its generation returns.

    python sharded_decode.py <model dir> <out dir> synced [plain]    (RANK, WORLD_SIZE, MASTER_* set)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(model_dir: str, out: str, modes: list[str]) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectevo.backends.hf import TransformersBackend, needs_synced_forwards, synced_forwards
    from reflectevo.sampling import Sampling

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    # rank 0: one call whose rows end after 2 tokens; rank 1: two calls of 6 and 4 tokens
    calls = ([(["Thought: the answer is", "Question: what is 3 + 4?"], 2)] if rank == 0 else
             [(["Action: Finish[", "the plan is to check", "Reflection: I added wrongly"], 6),
              (["Question: count the letters"], 4)])
    local = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()   # unsharded reference
    plain = TransformersBackend.around(local, tok, [], batch_size=8)
    reference = [[g.text for g in plain.generate(p, Sampling(n))] for p, n in calls]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.eval()
    for mode in modes:
        t0 = time.perf_counter()
        with synced_forwards(model, tok.pad_token_id, enabled=mode == "synced") as sync:
            backend = TransformersBackend.around(model, tok, [], batch_size=8, sync=sync)
            texts = [[g.text for g in backend.generate(p, Sampling(n))] for p, n in calls]
        record = {"rank": rank, "mode": mode, "texts": texts, "reference": reference,
                  "sharded": needs_synced_forwards(model), "seconds": round(time.perf_counter() - t0, 2),
                  "forwards": sync.forwards if sync else None, "idle": sync.idle if sync else None}
        Path(out, f"rank{rank}-{mode}.json").write_text(json.dumps(record))
    if modes[-1] == "plain" and rank == 0:
        time.sleep(120)   # keep the process group up: rank 1 waits in a collective rank 0 never joins
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
