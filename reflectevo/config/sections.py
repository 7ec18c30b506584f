"""The stage sections of params.yaml (prepare, generate, curate, evaluate, evolve, demo). The train section's
hyper-parameters live beside the trainers, in `reflectevo.training.config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from reflectevo.config.loader import (Bool, Float, Fraction, Int, Interval, MinLen, Named, NonNegInt, PosInt,
                                      Schema, Seed, Str, choices)
from reflectevo.errors import ReflectEvoError, unknown

Protocol = Literal["oracle", "intrinsic"]  # oracle: reflect on failures, told so; intrinsic: on every item, not told
Engine = Literal["local", "ray"]           # generate.engine: how episodes are computed (records are the same)
EvolveData = Literal["new", "union"]
EvolveInit = Literal["base", "previous"]
PROTOCOLS, ENGINES, EVOLVE_DATA, EVOLVE_INIT = choices(Protocol), choices(Engine), choices(EvolveData), choices(EvolveInit)

Rounds = Annotated[Int, Interval(ge=1, le=10)]          # reflect -> retry rounds (multi-round, Figure 4)
Temperature = Annotated[Float, Interval(ge=0, le=5)]    # 0 = greedy


@dataclass(frozen=True)
class TaskSpec(Schema):
    name: Str                            # a registered task name (see `reflectevo tasks`)
    n_train: NonNegInt = 0               # 0 = the whole train split
    n_test: NonNegInt = 0                # 0 = the whole test split
    options: dict[Str, Any] = field(default_factory=dict)  # generator options (reasoning-gym kwargs)


@dataclass(frozen=True)
class PrepareConfig(Schema):
    tasks: Annotated[tuple[TaskSpec, ...], MinLen(1)]
    seed: Seed = 0

    def check(self, where: str) -> None:
        from reflectevo.tasks.registry import get_task

        for i, t in enumerate(self.tasks):
            get_task(t.name, where=f"{where}.tasks[{i}].name")


@dataclass(frozen=True)
class GenerateConfig(Schema):
    k: PosInt = 2                               # reflections per failed item
    demands: Annotated[tuple[Str, ...], MinLen(1)] = ("all",)  # demand ids from the pool, or "all"
    temperature: Temperature = 0.8              # reflection sampling
    top_p: Annotated[Float, Interval(gt=0, le=1)] = 1.0
    max_new_tokens_trial: PosInt = 256
    max_new_tokens_reflection: PosInt = 256
    use_previous_trial: Bool = True             # show trial 1 in the trial-2 prompt
    protocol: Protocol = "oracle"
    reflect: Bool = True                        # false: the "w/o reflection" baseline (retry sees notice + attempt only)
    rounds: Rounds = 1                          # reflect -> retry rounds per sample
    retry_temperature: Temperature = 0.0        # trial 2 sampling (paper: 0 = greedy); > 0 draws each sample's retry
    name_rejected: Bool = False                 # oracle: the retry prompt names the rejected answer (not in the paper)
    seed: Seed = 0
    limit: NonNegInt = 0                        # 0 = every train item
    shard_size: PosInt = 50000                  # episodes per output shard
    workers: PosInt = 1                         # parallel generation processes (one per GPU), merged at the end
    engine: Engine = "local"                    # local: processes on this machine; ray: a Ray Data pipeline
    ray_address: Str = ""                       # engine ray: "" starts a local Ray; "auto" or "ray://head:10001" joins a cluster
    import_path: Str = ""                       # non-empty: no generation; data/raw holds this file's episodes
                                                # (ReflectEvo raw or our episodes; see data/imported/README.md)

    def check(self, where: str) -> None:
        from reflectevo.demands import demand_pool

        pool = demand_pool()
        for d in self.demands:
            if d != "all" and d not in pool:
                raise unknown("demand id", d, pool, f"{where}.demands")


@dataclass(frozen=True)
class CurateConfig(Schema):
    eval_fraction: Fraction = 0.1               # items (not rows) held out for eval
    min_reflection_words: NonNegInt = 3
    max_reflection_words: PosInt = 400
    max_pairs_per_item: PosInt = 4              # D± / Dpref pairs kept per failed attempt
    dedup_threshold: Annotated[Float, Interval(gt=0, le=1)] = 0.9  # TF-IDF cosine at or above which a
                                                # reflection is a near-duplicate
    judge: Str = "none"                         # ranks fixing reflections (Dpref): likelihood | self (the generating
                                                # model) | a model preset | none
    seed: Seed = 0

    def check(self, where: str) -> None:
        if self.max_reflection_words < self.min_reflection_words:
            raise ReflectEvoError(f"{where}.max_reflection_words: {self.max_reflection_words} is below "
                                  f"min_reflection_words ({self.min_reflection_words}): every reflection would be dropped")


@dataclass(frozen=True)
class EvaluateConfig(Schema):
    protocol: Protocol = "oracle"               # oracle: reflect only when wrong; intrinsic: always, no feedback
    rounds: Rounds = 1                          # reflect -> retry rounds: Acc@t1 .. Acc@t(rounds+1) (Figure 4)
    max_new_tokens_trial: PosInt = 256
    max_new_tokens_reflection: PosInt = 256
    name_rejected: Bool = False                 # oracle: the retry prompt names the rejected answer (as generate.name_rejected)
    limit: NonNegInt = 0                        # 0 = every test item


@dataclass(frozen=True)
class EvolveStep(Schema):
    """One iteration i >= 2 of `evolve.chain`: where iteration i-1's outputs are (dvc.yaml's foreach)."""

    models: Str                                 # its trained settings folder (models, evolve/it<i-1>/models)
    data: Str                                   # its training data folder (data/curated, evolve/it<i-1>/data)


def evolve_chain(iterations: int) -> dict[str, dict[str, str]]:
    """The `evolve.chain` for N iterations: it2 reads the main pipeline's outputs, it<i> those of it<i-1>."""
    chain = {}
    for i in range(2, iterations + 1):
        prev = "" if i == 2 else f"evolve/it{i - 1}/"
        chain[f"it{i}"] = {"models": f"{prev}models" if prev else "models",
                           "data": f"{prev}data" if prev else "data/curated"}
    return chain


@dataclass(frozen=True)
class EvolveConfig(Schema):
    """Self-evolution (generate -> curate -> train again with the trained reflector): dvc.yaml's `evolve_*`
    stages, one set per entry of `chain` (iterations 2..N); iteration 1 is the main pipeline."""

    iterations: PosInt = 1                      # N: 1 = train once (the paper)
    setting: Str = "one_stage"                  # whose adapters write the next round's reflections
    data: Annotated[EvolveData, Named("data policy")] = "new"  # new: the iteration's own D+ (D±, Dpref);
                                                # union: with earlier ones
    init: Annotated[EvolveInit, Named("init")] = "base"  # base: a fresh LoRA; previous: continue from
                                                # iteration i-1's adapter
    chain: dict[Str, EvolveStep] = field(default_factory=dict)

    def check(self, where: str) -> None:
        from reflectevo.settings import reflection_settings

        if self.setting not in reflection_settings():
            raise unknown("reflection setting", self.setting, reflection_settings(), f"{where}.setting")
        want = evolve_chain(self.iterations)
        have = {k: {"models": v.models, "data": v.data} for k, v in self.chain.items()}
        if have != want:
            raise ReflectEvoError(
                f"{where}.chain: does not match {where}.iterations: {self.iterations} (dvc.yaml runs one set of "
                f"evolve stages per entry); write it with `python stages/evolve.py chain {self.iterations}`")


@dataclass(frozen=True)
class DemoProtocol(Schema):
    systems: tuple[Str, ...] = ()               # systems evaluated under this protocol; () = every one evaluate runs


@dataclass(frozen=True)
class DemoConfig(Schema):
    """The demo (demo/dvc.yaml, `make demo`): the default run's trained settings evaluated on `items` fresh
    held-out items per task (never in data/sources), under each protocol of `protocols`."""

    items: PosInt = 300                         # fresh test items per task of prepare.tasks
    protocols: dict[Annotated[Protocol, Named("protocol")], DemoProtocol] = field(default_factory=dict)

    def check(self, where: str) -> None:
        from reflectevo.settings import system_names

        if not self.protocols:
            raise ReflectEvoError(f"{where}.protocols: name at least one of {', '.join(PROTOCOLS)}")
        known = system_names()
        for key, proto in self.protocols.items():
            for s in proto.systems:
                if s not in known:
                    raise unknown("system", s, known, f"{where}.protocols.{key}.systems")
