"""MTEB tasks: named ones from the hub, and local folder tasks read offline.

Readers are pure functions that validate everything before mteb sees it: a missing file, a
malformed line, qrels naming unknown ids or an empty corpus raise ``TaskDataError`` naming the
file and line. A local task whose name is an MTEB task of the same type subclasses that task, so
its metadata and evaluation settings (main score, classifier, k values) are MTEB's own.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from embedforge.config.evaluate import LocalTaskConfig
from embedforge.config.base import ConfigError

KIND_TO_TYPE = {"beir": "Retrieval", "sts": "STS", "classification": "Classification"}


class TaskDataError(ConfigError):
    """A local task's files cannot be used; the message names the file (and line)."""


def _require(path: Path) -> Path:
    if not path.is_file():
        raise TaskDataError(f"missing file: {path}")
    return path


def read_jsonl_texts(path: Path, what: str) -> dict[str, dict[str, str]]:
    """``{_id: {"text":..., "title":...}}`` from a BEIR jsonl file."""
    rows: dict[str, dict[str, str]] = {}
    with open(_require(path), encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
                raise TaskDataError(f"{path}:{lineno}: a {what} needs '_id' and a string 'text'")
            rid = str(obj["_id"])
            if rid in rows:
                raise TaskDataError(f"{path}:{lineno}: duplicate _id {rid!r}")
            rows[rid] = {"text": obj["text"], "title": str(obj.get("title") or "")}
    if not rows:
        raise TaskDataError(f"{path}: no {what}s (the file is empty)")
    return rows


def read_qrels(path: Path, query_ids: set[str], corpus_ids: set[str]) -> dict[str, dict[str, int]]:
    """``{query_id: {corpus_id: score}}``; every id must exist in queries/corpus."""
    qrels: dict[str, dict[str, int]] = {}
    with open(_require(path), encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0] == "query-id":
                continue
            if len(row) != 3:
                raise TaskDataError(f"{path}:{lineno}: expected 3 tab-separated columns "
                                    f"(query-id corpus-id score), got {len(row)}")
            qid, did, score = row
            try:
                s = int(float(score))
            except ValueError:
                raise TaskDataError(f"{path}:{lineno}: score {score!r} is not a number") from None
            if qid not in query_ids:
                raise TaskDataError(f"{path}:{lineno}: query-id {qid!r} is not in queries.jsonl")
            if did not in corpus_ids:
                raise TaskDataError(f"{path}:{lineno}: corpus-id {did!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[did] = s
    if not qrels:
        raise TaskDataError(f"{path}: no relevance judgements")
    return qrels


def read_beir(folder: str | Path, split: str) -> dict:
    """corpus, queries (those with judgements), relevant_docs of a BEIR folder, validated."""
    folder = Path(folder)
    qrels_path = _require(folder / "qrels" / f"{split}.tsv")
    corpus = read_jsonl_texts(folder / "corpus.jsonl", "document")
    queries = read_jsonl_texts(folder / "queries.jsonl", "query")
    qrels = read_qrels(qrels_path, set(queries), set(corpus))
    return {"corpus": corpus, "queries": {q: queries[q]["text"] for q in qrels}, "relevant_docs": qrels}


def read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a TSV with a header naming ``columns`` (extra columns ignored)."""
    rows = []
    with open(_require(path), encoding="utf-8", newline="") as fh:
        # Standard TSV quoting: a field in double quotes may hold tabs and newlines (Banking77 does).
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise TaskDataError(f"{path}: empty file (expected a header: {' '.join(columns)})")
        missing = [c for c in columns if c not in header]
        if missing:
            raise TaskDataError(f"{path}:1: header lacks column(s) {', '.join(missing)} (has: {' '.join(header)})")
        idx = [header.index(c) for c in columns]
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) < len(header):
                raise TaskDataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, got {len(row)}")
            rows.append({**{c: row[i] for c, i in zip(columns, idx, strict=True)}, "_line": lineno})
    if not rows:
        raise TaskDataError(f"{path}: no rows")
    return rows


def read_sts(folder: str | Path, split: str) -> list[dict]:
    path = Path(folder) / f"{split}.tsv"
    rows = read_tsv(path, ("sentence1", "sentence2", "score"))
    out = []
    for r in rows:
        lineno = r["_line"]
        try:
            score = float(r["score"])
        except ValueError:
            raise TaskDataError(f"{path}:{lineno}: score {r['score']!r} is not a number") from None
        out.append({"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": score})
    return out


def read_classification(folder: str | Path, split: str) -> dict[str, list[dict]]:
    """train and eval rows; labels are kept as given (strings are fine for the classifier)."""
    folder = Path(folder)
    train = [{"text": r["text"], "label": r["label"]} for r in read_tsv(folder / "train.tsv", ("text", "label"))]
    test = [{"text": r["text"], "label": r["label"]} for r in read_tsv(folder / f"{split}.tsv", ("text", "label"))]
    unseen = sorted({r["label"] for r in test} - {r["label"] for r in train})
    if unseen:
        raise TaskDataError(f"{folder / f'{split}.tsv'}: labels not in train.tsv: {', '.join(unseen[:5])}")
    return {"train": train, split: test}


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


def named_task(name: str):
    import mteb

    try:
        return mteb.get_task(name)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"evaluate.tasks: {name!r} is not an MTEB task ({exc})") from None
