"""Test helpers: a scripted backend (no model) and synthetic episodes."""

from __future__ import annotations

import re
from collections.abc import Callable

from reflectevo.sampling import Generation, Sampling, finish_text


class ScriptedBackend:
    """Renders chat messages as plain text and answers each prompt with `respond(prompt, sampling)`.

    Like the vLLM and OpenAI backends it cannot stop on the answer pattern while generating: the
    scripted text is cut at the first stop afterwards (`finish_text`), stop reason included."""

    name = "scripted"
    dtype = "none"
    batch_size = 8

    def __init__(self, respond: Callable[[str, Sampling], str]) -> None:
        self.respond = respond
        self.calls: list[tuple[list[str], Sampling]] = []
        self.seeds: list[list[int] | None] = []

    def render(self, messages):
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def generate(self, prompts, sampling, seeds=None):
        self.calls.append((list(prompts), sampling))
        self.seeds.append(None if seeds is None else list(seeds))
        out = []
        for p in prompts:
            text, reason = finish_text(self.respond(p, sampling), sampling, "eos")
            out.append(Generation(text, len(p.split()), 5, reason))
        return out


def arithmetic_responder(fix_on_retry: bool = True):
    """Trial 1 always wrong (answer 999999); reflections are fixed text; trial 2 right when asked."""

    def respond(prompt: str, sampling: Sampling) -> str:
        if "improves through self-reflection" in prompt:
            return f"I added the numbers wrongly. Plan: recompute each term carefully (t={sampling.temperature})."
        found = re.findall(r"problem: (.*?) =", prompt)  # the last one is the item (the first may be a few-shot)
        if "Reflection:" in prompt and fix_on_retry and found:
            value = eval(found[-1])  # noqa: S307 - test-only, our own arithmetic strings
            return f"Thought: compute again.\nAction: Finish[{value}]"
        return "Thought: guess.\nAction: Finish[999999]"

    return respond


def tiny_params_dict(params_file, tokens: int = 12, steps: int = 2, n_train: int = 6, n_test: int = 3) -> dict:
    """The project's params.yaml shrunk for the synthetic tiny-random model (seconds per stage)."""
    import yaml

    p = yaml.safe_load(open(params_file).read())
    p["model"] = "tiny-random"
    # the tests' own two tasks (not the default run's choice): a number task and a Yes/No task
    p["prepare"]["tasks"] = [{"name": "rg/chain_sum", "n_train": n_train, "n_test": n_test,
                              "options": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}},
                             {"name": "rg/syllogism", "n_train": n_train, "n_test": n_test}]
    p["generate"]["k"] = 2
    p["evaluate"]["rounds"] = 2                 # the multi-round path is tested on every run
    for section in ("generate", "evaluate"):
        p[section].update(max_new_tokens_trial=tokens, max_new_tokens_reflection=tokens)
    for hp in ("sft", "dpo"):
        p["train"][hp].update(max_steps=steps, batch_size=2, max_length=1024)
    return p


def ignore_at_root(root, *names: str):
    """A `shutil.copytree` ignore that leaves out `names` (glob patterns) directly under `root` only, so a
    top-level `models/` or `data/` is skipped but the package `reflectevo/models/` is copied."""
    import fnmatch
    import os

    root = os.path.abspath(root)

    def ignore(folder, entries):
        if os.path.abspath(folder) == root:
            return {e for e in entries if any(fnmatch.fnmatch(e, n) for n in names)}
        return {e for e in entries if e in ("__pycache__", ".pytest_cache") or e.endswith(".egg-info")}

    return ignore
