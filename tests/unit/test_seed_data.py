"""The shipped seed paraphrase pairs (configs/data/tiny_sts_pairs.tsv): loadable and independent of STSB.

The seed set exists so the tiny CPU pipeline trains on real paraphrases; it is only worth shipping if
it parses with the STS pair loader and shares nothing with the STS Benchmark the pipeline evaluates on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embedforge.config.generate import LabeledDatasetConfig
from embedforge.formats import STS_COLUMNS, read_sts_file
from embedforge.generate.labeled import load_labeled

SEED = Path(__file__).resolve().parents[2] / "configs" / "data" / "tiny_sts_pairs.tsv"
NGRAM = 8  # a shared run of this many normalised words counts as copied text


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _seed_sentences() -> list[str]:
    return [r[k] for r in read_sts_file(SEED) for k in ("sentence1", "sentence2")]


def test_seed_pairs_load_with_the_sts_pair_loader():
    with SEED.open(encoding="utf-8") as f:
        assert f.readline().rstrip("\n").split("\t") == list(STS_COLUMNS)  # exactly these columns
    records = read_sts_file(SEED)
    assert all(0.0 <= r["score"] <= 5.0 for r in records)
    ds = LabeledDatasetConfig(kind="sts_pairs", name="tiny-seed", path=str(SEED),
                              task="Retrieve semantically similar text.", score_threshold=4.0)
    rows = load_labeled(ds)
    assert len(rows) == sum(r["score"] >= 4.0 for r in records)
    assert len(rows) >= 220
    assert all(r.query.strip() and r.positive.strip() for r in rows)
    pairs = [(r.query, r.positive) for r in rows]
    assert len(set(pairs)) == len(pairs)
    # The file keeps lower-scored, related-but-different pairs too; the loader must drop them.
    assert len(records) > len(rows)


def test_seed_sentences_are_distinct_and_clean():
    sentences = _seed_sentences()
    normalised = [" ".join(_words(s)) for s in sentences]
    assert len(set(normalised)) == len(normalised)
    assert all(5 <= len(s.split()) <= 20 for s in sentences)
    assert not any(c in s for s in sentences for c in '"\t')


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_seed_set_shares_no_text_with_stsb(shared_data, split):
    stsb = read_sts_file(shared_data / "stsb" / f"{split}.tsv")
    stsb_sentences = [r[k] for r in stsb for k in ("sentence1", "sentence2")]
    assert len(stsb_sentences) > 1000  # the split really was read
    stsb_exact = {" ".join(_words(s)) for s in stsb_sentences}
    stsb_grams = set().union(*(_ngrams(s) for s in stsb_sentences))
    seed = _seed_sentences()
    exact = [s for s in seed if " ".join(_words(s)) in stsb_exact]
    overlapping = [s for s in seed if _ngrams(s) & stsb_grams]
    assert exact == [], f"seed sentences found verbatim in STSB {split}: {exact}"
    assert overlapping == [], f"seed sentences sharing an {NGRAM}-word run with STSB {split}: {overlapping}"
