"""The paper's per-task instructions (Table 15), looked up by MTEB task name.

Shared by evaluation (mteb wrapper) and serving (a request may name a task instead of an instruction).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

# Task types whose documents are encoded without an instruction (asymmetric tasks).
ASYMMETRIC_TYPES = ("Retrieval", "Reranking")


@lru_cache(maxsize=1)
def instruction_table() -> dict[str, dict[str, str]]:
    """{task_type: {task_name: instruction}}; a task type may hold "*" for all its tasks."""
    text = resources.files("embedforge").joinpath("resources/instructions.yaml").read_text()
    return yaml.safe_load(text)


def task_type_of(task_name: str) -> str | None:
    for task_type, tasks in instruction_table().items():
        if task_name in tasks:
            return task_type
    return None


# Aggregate tasks mteb scores as their subtasks: a subtask takes its aggregate's instruction.
SUBTASKS = {
    "CQADupstackRetrieval": tuple(f"CQADupstack{forum}Retrieval" for forum in (
        "Android", "English", "Gaming", "Gis", "Mathematica", "Physics", "Programmers", "Stats", "Tex", "Unix",
        "Webmasters", "Wordpress")),
}


def aggregate_of(task_name: str) -> str | None:
    return next((agg for agg, subs in SUBTASKS.items() if task_name in subs), None)


def named_instructions() -> dict[str, str]:
    """Task name -> instruction for every task the table names, aggregates' subtasks included (what the
    exported sentence-transformers ``prompts`` hold)."""
    out: dict[str, str] = {}
    for tasks in instruction_table().values():
        out.update({name: text for name, text in tasks.items() if name != "*"})
    for agg, subs in SUBTASKS.items():
        out.update({sub: out[agg] for sub in subs if agg in out})
    return out


def instruction_for(task_name: str, task_type: str | None = None, overrides: dict[str, str] | None = None) -> str:
    """The instruction for a task; ``overrides`` (from config) win; a subtask takes its aggregate's; an
    unknown task is an error."""
    if overrides and task_name in overrides:
        return overrides[task_name]
    if aggregate_of(task_name):
        task_name = aggregate_of(task_name)
        if overrides and task_name in overrides:
            return overrides[task_name]
    table = instruction_table()
    for tasks in table.values():
        if task_name in tasks:
            return tasks[task_name]
    if task_type is not None and "*" in table.get(task_type, {}):
        return table[task_type]["*"]
    if "STS" in task_name:  # STS12..STS22, STSBenchmark, SICK-R-style STS names
        return table["STS"]["*"]
    known = sorted(name for tasks in table.values() for name in tasks if name != "*")
    raise KeyError(
        f"no instruction known for task {task_name!r}; give one in config, or use one of: {', '.join(known)}"
    )
