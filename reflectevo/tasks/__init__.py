"""Task registry. Names: `rg/<generator>` for any reasoning-gym generator, plus registered tasks."""

from __future__ import annotations

from typing import Any

from reflectevo.errors import unknown
from reflectevo.registry import Registry
from reflectevo.tasks.base import ANSWER_TYPES, Item, Task, Verdict, extract_finish

TASKS: Registry[Any] = Registry("task")


def get_task(name: str, options: dict[str, Any] | None = None, where: str = "") -> Task:
    """Resolve a task name to a Task object; unknown names get a "did you mean" error."""
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


__all__ = ["ANSWER_TYPES", "Item", "Task", "TASKS", "Verdict", "extract_finish", "get_task"]
