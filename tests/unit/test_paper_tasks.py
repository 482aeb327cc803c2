"""configs/paper.yaml evaluates the paper's 56 MTEB English tasks, resolvable offline: each (aggregates
expanded to the subtasks mteb runs) has the paper's instruction, on the language subsets MTEB(eng) scores."""

from __future__ import annotations

import pytest

from embedforge.config import load_config
from embedforge.evaluate.tasks import ENGLISH_BENCHMARK, named_task
from embedforge.instructions import instruction_for


@pytest.fixture(scope="module")
def paper_tasks(repo_root):
    names = load_config(repo_root / "configs" / "paper.yaml").evaluate.tasks
    return names, [named_task(n) for n in names]


def test_the_task_list_is_the_56_of_mteb_english(paper_tasks):
    import mteb

    names, _ = paper_tasks
    assert len(names) == len(set(names)) == 56
    assert set(names) == {t.metadata.name for t in mteb.get_benchmark(ENGLISH_BENCHMARK).tasks}


def test_every_task_and_subtask_has_the_papers_instruction(paper_tasks):
    _, tasks = paper_tasks
    runs = [sub for t in tasks for sub in (getattr(t, "tasks", None) or [t])]
    assert len(runs) == 56 - 1 + 12  # CQADupstackRetrieval is scored as its 12 forums
    missing = []
    for task in runs:
        try:
            assert instruction_for(task.metadata.name, task.metadata.type).strip()
        except KeyError:
            missing.append(task.metadata.name)
    assert missing == []
    assert instruction_for("CQADupstackTexRetrieval") == instruction_for("CQADupstackRetrieval")


@pytest.mark.parametrize("name, subsets", [
    ("MassiveIntentClassification", ["en"]), ("MTOPDomainClassification", ["en"]),
    ("AmazonCounterfactualClassification", ["en"]), ("AmazonReviewsClassification", ["en"]),
    ("STS17", ["en-en"]), ("STS22", ["en"]), ("SciFact", ["default"]),
])
def test_multilingual_tasks_are_scored_on_their_english_subsets_only(name, subsets):
    assert named_task(name).hf_subsets == subsets


def test_the_exported_prompts_name_every_task_mteb_runs(paper_tasks):
    """mteb looks a sentence-transformers model's prompt up by task name and side (its own
    ``get_prompt_name``): for every task (and subtask) the paper's list runs, STS included, queries get
    the instruction evaluation uses, and retrieval / reranking documents get none."""
    from mteb.models.abs_encoder import get_prompt_name
    from mteb.types import PromptType

    from embedforge.instructions import ASYMMETRIC_TYPES
    from embedforge.train.model import query_prompts
    from embedforge.train.runner import training_instructions

    _, tasks = paper_tasks
    prompts = query_prompts(training_instructions())
    runs = [sub for t in tasks for sub in (getattr(t, "tasks", None) or [t])]
    for task in runs:
        meta = task.metadata
        wanted = f"Instruct: {instruction_for(meta.name, meta.type)}\nQuery: "
        assert prompts.get(get_prompt_name(prompts, meta, PromptType.query)) == wanted, meta.name
        document = get_prompt_name(prompts, meta, PromptType.document)
        if meta.type in ASYMMETRIC_TYPES:
            assert document is None, (meta.name, document)
        else:
            assert prompts.get(document) == wanted, meta.name
