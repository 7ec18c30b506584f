"""Tasks: items in one unified schema, an answer form, an extractor and a verifier (`base`); the registry of
task names (`registry`: `get_task`, `TaskCache`); answer rules (`answers`, `typed`, `math_fast`); the task
families (`reasoning_gym_task`, `reflectevo_tasks`, `yaml_task`) and their few-shot examples (`fewshot`)."""

from __future__ import annotations

from reflectevo.tasks.base import ANSWER_TYPES, Item, Task, Verdict, check_prompting, extract_finish

__all__ = ["ANSWER_TYPES", "Item", "Task", "Verdict", "check_prompting", "extract_finish"]
