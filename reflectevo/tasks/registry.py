"""The task registry: names -> tasks. `rg/<generator>` for any reasoning-gym generator, the ReflectEvo tasks
(`logiqa`, `math`, `mbpp`, `bigbench`, `bigbench_free`, `bigbench/<task>`), or a path to a task YAML file;
task groups; `TaskCache`, each item's task built with the options it was prepared with."""

from __future__ import annotations

import json
from typing import Any

from reflectevo.errors import unknown
from reflectevo.registry import Registry
from reflectevo.tasks.base import Item, Task

TASKS: Registry[Any] = Registry("task")
for _name, _cls in (("logiqa", "LogiQATask"), ("math", "MathTask"), ("mbpp", "MBPPTask"), ("bigbench", "BigBenchTask"),
                    ("bigbench_free", "BigBenchFreeTask")):
    TASKS.register(_name, f"reflectevo.tasks.reflectevo_tasks:{_cls}")
for _name in ("vitaminc_fact_verification", "strategyqa", "social_iqa", "timedial", "analytic_entailment",
              "physical_intuition", "squad_shifts", "coqa",
              # stand-ins for ReflectEvo-460K's six unidentified small subtasks (resources/paper.yaml)
              "causal_judgment", "cause_and_effect", "sports_understanding", "social_support", "winowhy",
              "temporal_sequences"):
    TASKS.register(f"bigbench/{_name}", lambda _n=_name, **options: _bigbench_subtask(_n, options))

# A group names the tasks of one ReflectEvo data set; the split is implied by the group's name.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    # ReflectEvo's four 500-item test sets (BIG-bench's 500 = 356 multiple choice + 144 free text)
    "reflectevo-test": ("logiqa", "math", "mbpp", "bigbench", "bigbench_free"),
    # training sources: LogiQA, MATH, MBPP and the 14 BIG-bench tasks of ReflectEvo-460K (the eight identified
    # ones, then our stand-ins for the six nobody has identified: reflectevo/resources/paper.yaml)
    "reflectevo-train": ("logiqa", "math", "mbpp", "bigbench/vitaminc_fact_verification", "bigbench/strategyqa",
                         "bigbench/social_iqa", "bigbench/timedial", "bigbench/analytic_entailment",
                         "bigbench/physical_intuition", "bigbench/coqa", "bigbench/squad_shifts",
                         "bigbench/causal_judgment", "bigbench/cause_and_effect", "bigbench/sports_understanding",
                         "bigbench/social_support", "bigbench/winowhy", "bigbench/temporal_sequences"),
}


def _bigbench_subtask(subtask: str, options: dict[str, Any]) -> Task:
    from reflectevo.tasks.reflectevo_tasks import BigBenchSubtask

    return BigBenchSubtask(subtask, **options)


class TaskCache:
    """Task objects for items, built once per (task name, task options). Prompts and verdicts depend on the
    options an item was prepared with (`meta.task_options`: multiple choice `choices: N`, generator options):
    the prepare stage records them in every item, and every consumer (generate, evaluate, training, rewards)
    must build the task with them. `given`: tasks already built by name (used for items of that name)."""

    def __init__(self, given: dict[str, Task] | None = None) -> None:
        self.given = dict(given or {})
        self._built: dict[tuple[str, str], Task] = {}

    def of(self, item: Item) -> Task:
        if item.task in self.given:
            return self.given[item.task]
        options = (item.meta or {}).get("task_options") or None
        key = (item.task, json.dumps(options, sort_keys=True) if options else "")
        if key not in self._built:
            self._built[key] = get_task(item.task, options)
        return self._built[key]


def task_group(name: str) -> list[str]:
    """Task names of a group (`reflectevo-test`: their `test` split; `reflectevo-train`: `train`)."""
    if name not in TASK_GROUPS:
        raise unknown("task group", name, TASK_GROUPS)
    return list(TASK_GROUPS[name])


def get_task(name: str, options: dict[str, Any] | None = None, where: str = "") -> Task:
    """Resolve a task name (or a task YAML path) to a Task object; unknown names get a "did you mean" error."""
    from reflectevo.tasks.yaml_task import YamlTask, is_task_file

    if is_task_file(name):
        return YamlTask(name, **(options or {}))
    if name.startswith("rg/"):
        from reflectevo.tasks.reasoning_gym_task import ReasoningGymTask, generator_names

        gen = name[3:]
        if gen not in generator_names():
            raise unknown("task", name, [f"rg/{g}" for g in generator_names()] + TASKS.names(), where)
        return ReasoningGymTask(gen, options)
    if name not in TASKS:
        from reflectevo.tasks.reasoning_gym_task import generator_names

        raise unknown("task", name, TASKS.names() + [f"rg/{g}" for g in generator_names()], where)
    factory = TASKS.get(name)
    return factory(**(options or {})) if options else factory()
