"""What a person watching a stage sees: one line saying what the stage does and how big it is, bars that move
while the work is done (generations finished, tokens/s, ETA), and no library noise they cannot act on.

- `announce("generate", "64 items × trial → reflect (k=3) → retry on SmolLM2-135M-Instruct, bf16")` prints
  the stage line (stderr, like the bars).
- `Meter`: a bar over generations (completions), with the tokens the model processed per second (prompt
  tokens prefilled and new tokens drawn: with prompts of hundreds of tokens and answers of tens, the prefill
  is most of the work). A backend that can (`reports_progress = True`: the transformers backend) advances it
  from inside, after each batch's prefill and at every decoding step as rows finish; any other backend
  advances it once per call. `Metered(backend, meter)` routes a backend's calls to a meter
  without the caller knowing: the protocol code calls `generate` as always.
- `quiet_libraries()`: the warnings and bars of libraries that say nothing a user of this pipeline can act on
  (each filter says why).

Nothing here imports torch or transformers; tqdm is imported when a bar is made.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

# Library output a user of this pipeline cannot act on, silenced where our calls cause it:
# - transformers 5.2x deprecated `is_gradient_checkpointing` (-> is_activation_checkpointing) and PEFT 0.21
#   still reads the old name whenever it wraps a model (peft/peft_model.py:184, peft/mixed_model.py:39): a
#   FutureWarning for every adapter trained or loaded, about code in neither this project nor the user's.
# - the same for `gradient_checkpointing_enable/disable`, which TRL 1.16 calls (trl/models/utils.py).
# - TRL's and datasets' per-dataset "Tokenizing / Truncating / Adding EOS" bars and transformers' "Loading
#   weights" bar: several bars per train stage for work of a second; the stage's own bars say what runs.
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*is_gradient_checkpointing.*deprecated", FutureWarning),
    (r".*gradient_checkpointing_(enable|disable).*deprecated", FutureWarning),
)
QUIET_ENV = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1",   # datasets' map/filter bars (TRL's tokenization)
             "HF_HUB_DISABLE_PROGRESS_BARS": "1",        # transformers' "Loading weights" and hub download bars
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",   # transformers' advice meant for model authors
             "TOKENIZERS_PARALLELISM": "false"}          # the fork warning of tokenizers in worker processes


def quiet_libraries() -> None:
    """Silence the library output listed above (environment defaults a user may override, and warning filters).
    Call it before transformers, datasets or huggingface_hub are imported (the stage scripts do, through
    `reflectevo.stage`); the filters also work later."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def announce(stage: str, what: str, file: TextIO | None = None) -> str:
    """Print (and return) the stage line: `<stage>: <what it does and its size>`."""
    line = f"{stage}: {what}"
    print(line, file=file or sys.stderr, flush=True)
    return line


def model_label(preset_name: str, preset: Any, dtype: str | None = None) -> str:
    """`SmolLM2-135M-Instruct, bf16`: the model's own name where the preset has one, else the preset's name."""
    hub_id = getattr(preset, "hub_id", "") or ""
    name = hub_id.rsplit("/", 1)[-1] if hub_id else preset_name
    short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(dtype or "", dtype or "")
    return f"{name}, {short}" if short else name


def bar_width(file: Any) -> dict[str, Any]:
    """tqdm's size arguments for `file`: the terminal's width, followed as it changes; a fixed 100 x 40 where a
    terminal reports 0 columns (a pseudo-terminal given no size, as `script` or some CI runners make), on which
    tqdm would draw nothing (it hides bars beyond the screen's 0 lines)."""
    try:
        if file.isatty() and os.get_terminal_size(file.fileno()).columns == 0:
            return {"ncols": 100, "nrows": 40}
    except (AttributeError, OSError, ValueError):
        pass
    return {"dynamic_ncols": True}


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


class Meter:
    """A bar over generations (completions) with tokens/s and an ETA.

    `total` is what the caller expects to run; `expect(n)` adds to it (or, negative, takes back work that
    will not be needed). The bar never shows more done than its total (a call the plan did not foresee
    raises the total). `step(finished, tokens)`: `finished` completions ended, `tokens` tokens went through
    the model (prompt or new) since the last call. Disabled (`enabled=False`), it counts without drawing."""

    def __init__(self, desc: str, total: int, enabled: bool = True, unit: str = "gen", file: TextIO | None = None,
                 min_interval: float = 0.5) -> None:
        self.desc, self.total, self.done, self.tokens = desc, max(0, int(total)), 0, 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self.min_interval = min_interval
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            out = file or sys.stderr
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=out, mininterval=min_interval, smoothing=0.1,
                            **bar_width(out))

    def expect(self, n: int) -> None:
        self.total = max(self.done, self.total + int(n))
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def reserve(self, n: int) -> None:
        """A call of `n` generations starts: the total makes room for it if the plan did not (an answer step
        for trials that ended without an answer), so the bar shows the call as work still to do."""
        if self.done + n > self.total:
            self.expect(self.done + n - self.total)

    def step(self, finished: int = 0, tokens: int = 0) -> None:
        self.tokens += int(tokens)
        if self.done + finished > self.total:
            self.expect(self.done + finished - self.total)
        self.done += int(finished)
        if self.bar is None:
            return
        now = time.monotonic()
        if finished or now - self._last >= self.min_interval:
            self._last = now
            self.bar.set_postfix_str(f"{self.tokens_per_s():.0f} tok/s", refresh=False)
            self.bar.update(finished)
            if not finished:
                self.bar.refresh()

    def tokens_per_s(self) -> float:
        dt = time.monotonic() - self.t0
        return self.tokens / dt if dt > 0 else 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.tokens_per_s():.0f} tok/s", refresh=False)
            self.bar.close()
            self.bar = None


class Metered:
    """A backend whose generations advance `meter` (None: no bar); everything else is the backend's own."""

    def __init__(self, backend: Any, meter: Meter | Relay | None = None) -> None:
        self._backend = backend
        self.meter = meter

    @property
    def wrapped(self) -> Any:
        return self._backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def generate(self, prompts: Sequence[str], sampling: Any, seeds: Sequence[int] | None = None) -> list[Any]:
        meter, backend = self.meter, self._backend
        if meter is None:
            return backend.generate(prompts, sampling, seeds=seeds)
        meter.reserve(len(prompts))
        if getattr(backend, "reports_progress", False):   # per prefill and decoding step, from inside the backend
            seen = [0]

            def step(finished: int, tokens: int) -> None:
                seen[0] += finished
                meter.step(finished, tokens)

            backend.progress = step
            try:
                gens = backend.generate(prompts, sampling, seeds=seeds)
            finally:
                backend.progress = None
            meter.step(max(0, len(gens) - seen[0]), 0)      # rows it did not report (none, normally)
            return gens
        gens = backend.generate(prompts, sampling, seeds=seeds)
        meter.step(len(gens), sum(int(getattr(g, "n_prompt_tokens", 0) or 0) + int(getattr(g, "n_new_tokens", 0) or 0)
                                  for g in gens))
        return gens


def metered(backend: Any, meter: Meter | Relay | None) -> Any:
    """`backend` with its generations counted by `meter`. A set of phase backends (trial, reflector,
    corrector: `reflectevo.protocol.rounds.PhaseBackends`) keeps its shape: each distinct backend is
    wrapped once, so phases that shared one still share it."""
    phases = getattr(backend, "distinct", None)
    if phases is None:
        return Metered(backend, meter)
    wrapped = {id(b): Metered(b, meter) for b in phases()}
    return type(backend)(wrapped[id(backend.trial)], wrapped[id(backend.reflector)], wrapped[id(backend.corrector)])


def seconds_label(seconds: float) -> str:
    """`47 s`, `3 min 05 s`."""
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


class Relay:
    """Stands in for a meter that changes during a run: backends built once report to the relay, and the relay
    passes each step to the bar of the moment (evaluate: one bar per system over the same backends)."""

    def __init__(self) -> None:
        self.current: Meter | None = None

    def step(self, finished: int = 0, tokens: int = 0) -> None:
        if self.current is not None:
            self.current.step(finished, tokens)

    def reserve(self, n: int) -> None:
        if self.current is not None:
            self.current.reserve(n)

    def start(self, desc: str, total: int, enabled: bool = True) -> Meter:
        self.finish()
        self.current = Meter(desc, total, enabled=enabled)
        return self.current

    def finish(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
