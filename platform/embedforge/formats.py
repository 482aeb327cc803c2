"""One reader and one writer per data-set file format the platform reads or writes.

BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), STS pairs (TSV:
``sentence1 sentence2 score``), labeled pairs (TSV: ``sentence1 sentence2 label``) and
classification sets (TSV: ``text label``). Readers are pure functions that validate as they read:
a missing file, a malformed line, qrels naming unknown ids or an empty file raise ``FormatError``
naming the file and the line. Generation (labeled sets), evaluation (local tasks), the pipeline's
held-out split and the benchmarks all read and write through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from embedforge.config.base import ConfigError


class FormatError(ConfigError):
    """A data file that cannot be used; the message names the file (and the line)."""


def write_beir(folder: str | Path, corpus: dict[str, dict[str, str]], queries: dict[str, str],
               qrels: dict[str, dict[str, int]], split: str = "test") -> Path:
    """A BEIR folder; ``corpus`` maps ids to ``{"title", "text"}``. Files are replaced whole."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for did, doc in corpus.items():
            fh.write(json.dumps({"_id": did, "title": doc.get("title", ""), "text": doc["text"]}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for did, score in docs.items():
                fh.write(f"{qid}\t{did}\t{score}\n")
    return folder
