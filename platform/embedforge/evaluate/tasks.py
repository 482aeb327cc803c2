"""MTEB tasks: named ones from the hub, and local folder tasks read offline.

Local folders are read by ``embedforge.formats`` (validated before mteb sees them: a bad file raises
``FormatError`` naming the file and line). A local task whose name is an MTEB task of the same type
subclasses that task, so its metadata and evaluation settings (main score, classifier, k values) are
MTEB's own.
"""

from __future__ import annotations

from pathlib import Path

from embedforge.config.base import ConfigError
from embedforge.config.evaluate import LocalTaskConfig
from embedforge.formats import (
    FormatError,
    labeled_beir_folder,
    read_beir,
    read_classification_file,
    read_sts_file,
)

KIND_TO_TYPE = {"beir": "Retrieval", "sts": "STS", "classification": "Classification"}


def read_sts(folder: str | Path, split: str) -> list[dict]:
    """The STS pairs of a local folder's ``<split>.tsv``."""
    return read_sts_file(Path(folder) / f"{split}.tsv")


def read_classification(folder: str | Path, split: str) -> dict[str, list[dict]]:
    """train and eval rows (``train.tsv``, ``<split>.tsv``); every eval label must occur in train."""
    folder = Path(folder)
    train = read_classification_file(folder / "train.tsv")
    test = read_classification_file(folder / f"{split}.tsv")
    unseen = sorted({r["label"] for r in test} - {r["label"] for r in train})
    if unseen:
        raise FormatError(f"{folder / f'{split}.tsv'}: labels not in train.tsv: {', '.join(unseen[:5])}")
    return {"train": train, split: test}


def corpus_labels_folder(cfg) -> Path | None:
    """The BEIR folder whose labeled queries ``evaluate.corpus_labels`` scores: ``generate.corpus`` when
    it is one with ``qrels/<split>.tsv``; None when corpus_labels is off or the corpus has none."""
    labels, corpus = cfg.evaluate.corpus_labels, cfg.generate.corpus
    if not (labels and corpus and corpus.format in ("auto", "beir")):
        return None
    return labeled_beir_folder(corpus.path, labels.split)


def evaluated_local_tasks(cfg) -> list[LocalTaskConfig]:
    """``evaluate.local_tasks`` plus, with ``evaluate.corpus_labels`` set, the corpus's own labeled queries
    when ``generate.corpus`` is a BEIR folder that has them and no local task reads that folder's split
    already. Resolved from the corpus on every call, never stored in the config."""
    from embedforge.instructions import named_instructions

    tasks, labels, folder = list(cfg.evaluate.local_tasks), cfg.evaluate.corpus_labels, corpus_labels_folder(cfg)
    if folder is None or any(t.kind == "beir" and t.split == labels.split and Path(t.path).expanduser().resolve() == folder.resolve()
                             for t in tasks):
        return tasks
    own = folder.resolve().name
    name = labels.name or {n.lower(): n for n in named_instructions()}.get(own.lower(), own)
    if name in list(cfg.evaluate.tasks) + [t.name for t in tasks]:
        raise ConfigError(f"evaluate.corpus_labels: the corpus's labeled queries would be task {name!r}, a name "
                          "another evaluated task has; give evaluate.corpus_labels.name")
    return tasks + [LocalTaskConfig(kind="beir", path=str(folder), name=name, split=labels.split)]


# ---------------------------------------------------------------------------------- mteb tasks


def _mteb_task_class(name: str, task_type: str):
    """The MTEB task class called ``name`` if it exists and has ``task_type``, else None."""
    import mteb

    try:
        task = mteb.get_task(name)
    except Exception:  # noqa: BLE001 - mteb raises KeyError/ValueError by version
        return None
    return type(task) if task.metadata.type == task_type else None


def _base_class(kind: str):
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    return {"beir": AbsTaskRetrieval, "sts": AbsTaskSTS, "classification": AbsTaskClassification}[kind]


def _metadata(cfg: LocalTaskConfig, base_meta=None):
    from mteb.abstasks.task_metadata import TaskMetadata

    main = {"beir": "ndcg_at_10", "sts": "cosine_spearman", "classification": "accuracy"}[cfg.kind]
    fields = dict(
        name=cfg.name,
        description=f"local {cfg.kind} task from {cfg.path}",
        dataset={"path": str(Path(cfg.path).resolve()), "revision": "local"},
        type=KIND_TO_TYPE[cfg.kind],
        category="t2t" if cfg.kind != "classification" else "t2c",
        eval_splits=[cfg.split],
        eval_langs=["eng-Latn"],
        main_score=main,
    )
    if base_meta is not None:
        # Keep MTEB's own metadata (main score, prompt, ...) but the local path/split.
        fields = dict(base_meta.model_dump(), dataset=fields["dataset"], eval_splits=[cfg.split])
    return TaskMetadata(**fields)


def _load_local(task, cfg: LocalTaskConfig) -> None:
    from datasets import Dataset, DatasetDict

    if cfg.kind == "beir":
        data = read_beir(cfg.path, cfg.split)
        corpus = Dataset.from_list([{"id": k, "title": v["title"], "text": v["text"]} for k, v in data["corpus"].items()])
        queries = Dataset.from_list([{"id": k, "text": v} for k, v in data["queries"].items()])
        task.dataset = {"default": {cfg.split: {"corpus": corpus, "queries": queries,
                                                "relevant_docs": data["relevant_docs"], "top_ranked": None}}}
    elif cfg.kind == "sts":
        task.dataset = DatasetDict({cfg.split: Dataset.from_list(read_sts(cfg.path, cfg.split))})
    else:
        splits = read_classification(cfg.path, cfg.split)
        task.dataset = DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})
    task.data_loaded = True


def local_task(cfg: LocalTaskConfig):
    """An mteb AbsTask instance whose ``load_data`` reads ``cfg.path`` (validated) instead of the hub."""
    task_type = KIND_TO_TYPE[cfg.kind]
    known = _mteb_task_class(cfg.name, task_type)
    base = known or _base_class(cfg.kind)
    attrs = {
        "metadata": _metadata(cfg, known.metadata if known else None),
        "load_data": lambda self, *a, **k: None if self.data_loaded else _load_local(self, cfg),
        "__module__": __name__,
    }
    if cfg.kind == "sts":
        attrs.update(min_score=cfg.min_score, max_score=cfg.max_score)
    cls = type(f"Local{cfg.name.replace('-', '_')}", (base,), attrs)
    task = cls()
    task.load_data()  # validate now: bad files fail before any model is loaded
    return task


# The benchmark the paper reports (MTEB English, 56 tasks). It scores the English subsets of its
# multilingual tasks (e.g. MassiveIntentClassification: en; STS17: en-en), where mteb.get_task alone
# would score every language.
ENGLISH_BENCHMARK = "MTEB(eng, v1)"


def english_scope(name: str) -> dict:
    """The subsets and splits MTEB(eng, v1) scores task ``name`` on ({} for a task outside it)."""
    import mteb

    for task in mteb.get_benchmark(ENGLISH_BENCHMARK).tasks:  # mteb caches the benchmark
        if task.metadata.name == name:
            return {"hf_subsets": list(task.hf_subsets), "eval_splits": list(task.eval_splits)}
    return {}


def named_task(name: str):
    """A fresh MTEB task called ``name``, on the English subsets and splits MTEB(eng, v1) scores when it
    is one of that benchmark's tasks (the benchmark's own task objects are shared, so not handed out)."""
    import mteb

    try:
        return mteb.get_task(name, **english_scope(name))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"evaluate.tasks: {name!r} is not an MTEB task ({exc})") from None
