"""Evaluation stage, without a Ray cluster: readers and their errors, instructions, cache, id join,
the mteb wrapper over a tiny random model, summary files, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedforge.config import load_config
from embedforge.config.base import ConfigError
from embedforge.config.evaluate import EvaluateConfig, LocalTaskConfig
from embedforge.encode_pool import join_by_id, length_sorted_rows
from embedforge.evaluate.cache import EmbeddingCache, model_fingerprint, namespace_key, text_hash
from embedforge.evaluate.summary import summary_table, to_markdown, write_summary
from embedforge.evaluate.tasks import evaluated_local_tasks, local_task, read_classification
from embedforge.evaluate.wrapper import task_instruction
from embedforge.formats import FormatError, write_beir


def _beir_folder(folder: Path) -> Path:
    """A two-document BEIR folder with one judged and one unjudged query."""
    corpus = {"d1": {"title": "Cats", "text": "Cats purr."}, "d2": {"title": "", "text": "Stocks fell."}}
    return write_beir(folder, corpus, {"q1": "what sound do cats make", "q2": "unjudged query"}, {"q1": {"d1": 1}})


# ---------------------------------------------------------- local task folders (file formats: test_formats.py)


def test_classification_reader_checks_labels(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\nhi\tgreet\nbye\tleave\n")
    (tmp_path / "test.tsv").write_text('text\tlabel\n"multi\nline"\tgreet\n')
    data = read_classification(tmp_path, "test")
    assert data["test"] == [{"text": "multi\nline", "label": "greet"}]
    (tmp_path / "test.tsv").write_text("text\tlabel\nhmm\tconfused\n")
    with pytest.raises(FormatError, match="labels not in train.tsv: confused"):
        read_classification(tmp_path, "test")


def test_local_task_keeps_mteb_metadata_for_known_names(tmp_path):
    (tmp_path / "test.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\t1\n")
    task = local_task(LocalTaskConfig(kind="sts", path=str(tmp_path), name="STSBenchmark"))
    from mteb.tasks.sts.eng.sts_benchmark_sts import STSBenchmarkSTS

    assert isinstance(task, STSBenchmarkSTS)
    assert task.metadata.main_score == "cosine_spearman" and task.metadata.eval_splits == ["test"]
    assert len(task.dataset["test"]) == 2
    own = local_task(LocalTaskConfig(kind="beir", path=str(_beir_folder(tmp_path / "b")), name="MyHeldOut"))
    assert own.metadata.type == "Retrieval" and own.metadata.main_score == "ndcg_at_10"
    assert own.dataset["default"]["test"]["relevant_docs"] == {"q1": {"d1": 1}}


# -------------------------------------------------------------------------------- instructions


def test_instructions_by_side_and_task_type():
    sci = "Given a scientific claim, retrieve documents that support or refute the claim"
    assert task_instruction("SciFact", "Retrieval", "query") == sci
    assert task_instruction("SciFact", "Retrieval", "document") is None
    assert task_instruction("STSBenchmark", "STS", "query") == "Retrieve semantically similar text."
    assert task_instruction("STSBenchmark", "STS", "document") == "Retrieve semantically similar text."
    assert task_instruction("Banking77Classification", "Classification", None).startswith("Given a online banking")
    assert task_instruction("SciFact", "Retrieval", "query", {"SciFact": "custom"}) == "custom"
    with pytest.raises(KeyError, match="no instruction known for task 'MyTask'"):
        task_instruction("MyTask", "Retrieval", "query")


# ---------------------------------------------------------------------------------- cache / ids


def test_cache_persists_across_instances_and_namespaces(tmp_path):
    ns_a, ns_b = namespace_key("fp", "inst A"), namespace_key("fp", None)
    assert ns_a != ns_b and ns_a == namespace_key("fp", "inst A")
    cache = EmbeddingCache(tmp_path, ns_a)
    keys = [text_hash("x"), text_hash("y")]
    cache.put_many(keys, np.array([[1, 0], [0, 1]], dtype=np.float32))
    (tmp_path / ns_a / ".junk.tmp").write_bytes(b"half-written")  # a killed writer's leftover
    again = EmbeddingCache(tmp_path, ns_a)
    assert len(again) == 2 and np.allclose(again.get_many([keys[1]])[keys[1]], [0, 1])
    assert EmbeddingCache(tmp_path, ns_b).get_many(keys) == {}
    with pytest.raises(ValueError, match="2 keys but 1 vectors"):
        cache.put_many(keys, np.zeros((1, 2)))


def test_store_indexes_whole_shards_only_and_reads_just_the_rows_asked(tmp_path):
    from embedforge.evaluate.cache import INDEX_FILE

    ns = namespace_key("fp", None)
    cache = EmbeddingCache(tmp_path, ns)
    keys = [text_hash(str(i)) for i in range(6)]
    cache.put_many(keys[:4], np.arange(8, dtype=np.float32).reshape(4, 2))
    cache.put_many(keys[2:3], np.array([[9, 9]], dtype=np.float32))  # re-encoded: the latest wins
    # A shard renamed into place but never indexed (killed before the commit) is not in the store.
    np.save(tmp_path / ns / "orphan.npy", np.ones((2, 2), dtype=np.float32))
    fresh = EmbeddingCache(tmp_path, ns)
    assert len(fresh) == 4 and fresh.shard_count() == 3 and (tmp_path / ns / INDEX_FILE).is_file()
    got = fresh.get_many([keys[3], keys[2], keys[5]])
    assert set(got) == {keys[3], keys[2]}  # keys[5] was never stored
    assert np.array_equal(got[keys[3]], [6, 7]) and np.array_equal(got[keys[2]], [9, 9])
    # Off (root None): nothing on disk, the instance's own vectors in memory.
    off = EmbeddingCache(None, ns)
    off.put_many(keys[:1], np.array([[1, 2]], dtype=np.float32))
    assert not off.enabled and len(off) == 1 and np.array_equal(off.get_many(keys[:2])[keys[0]], [1, 2])


def test_fingerprint_follows_files_and_settings(tmp_path):
    # Under a ".cache" folder, like every imported GGUF and fetched run model (~/.cache/embedforge):
    # the pipeline test caught a tuned model and its backbone sharing one cache key there.
    model = tmp_path / ".cache" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    fp = model_fingerprint(str(model), pooling="last_token")
    assert fp == model_fingerprint(str(model), pooling="last_token")
    assert fp != model_fingerprint(str(model), pooling="mean")
    (model / "model.safetensors").write_bytes(b"123")
    assert fp != model_fingerprint(str(model), pooling="last_token")
    with_weights = model_fingerprint(str(model), pooling="last_token")
    (model / ".cache").mkdir()  # hub download state inside the folder: not part of the model
    (model / ".cache" / "lock").write_text("x")
    assert model_fingerprint(str(model), pooling="last_token") == with_weights


def test_join_by_id_ignores_row_order():
    vecs = np.arange(10, dtype=np.float32).reshape(5, 2)
    batches = [(np.array([4, 0]), vecs[[4, 0]]), (np.array([2, 1, 3]), vecs[[2, 1, 3]])]
    assert np.array_equal(join_by_id(5, None, batches), vecs)
    with pytest.raises(RuntimeError, match="1 of 5 texts came back without an embedding"):
        join_by_id(5, None, batches[:1] + [(np.array([2, 1]), vecs[[2, 1]])])
    with pytest.raises(ValueError, match="id 0 encoded twice"):
        join_by_id(5, None, batches + [(np.array([0]), vecs[[0]])])


def test_length_sorted_rows_keep_ids():
    rows = length_sorted_rows(["aa", "a", "aaaa"], [None, "find", None])
    assert [r["id"] for r in rows] == [2, 0, 1] and rows[0]["text"] == "aaaa"
    assert [r["instruction"] for r in rows] == ["", "", "find"]  # "" = none: one type per Arrow column


# ------------------------------------------------------------------------------ mteb wrapper


@pytest.fixture
def tiny_model_dir(tmp_path):
    from embedforge.testing import save_tiny_model

    return str(save_tiny_model(tmp_path / "tiny"))


def test_wrapper_applies_instructions_and_caches(tmp_path, tiny_model_dir):
    import mteb
    from mteb._create_dataloaders import _create_dataloader_from_texts
    from mteb.models import EncoderProtocol

    from embedforge.evaluate.spec import ModelSpec
    from embedforge.evaluate.wrapper import EmbedforgeModel

    spec = ModelSpec(backbone=tiny_model_dir, max_length=32)
    model = EmbedforgeModel(spec, "test/tiny", cache_dir=str(tmp_path / "cache"))
    assert isinstance(model, EncoderProtocol)
    assert model.mteb_model_meta.name == "test/tiny" and model.mteb_model_meta.embed_dim == model.encoder.dim
    meta = mteb.get_task("SciFact").metadata
    texts = ["a claim about cells", "another claim", "a claim about cells"]
    q = model.encode(_create_dataloader_from_texts(texts), task_metadata=meta, hf_split="test",
                     hf_subset="default", prompt_type="query")
    d = model.encode(_create_dataloader_from_texts(texts), task_metadata=meta, hf_split="test",
                     hf_subset="default", prompt_type="document")
    enc = model.encoder  # no encoder given: the spec's embedder in this process (no Ray in the unit tier)
    sci = task_instruction("SciFact", "Retrieval", "query")
    assert np.allclose(q, enc.encode(texts, instruction=sci), atol=1e-5)
    assert np.allclose(d, enc.encode(texts), atol=1e-5)
    assert not np.allclose(q, d)
    assert model.stats.encoded == 4 and model.stats.cache_hits == 2  # duplicates encoded once
    fresh = EmbedforgeModel(spec, "test/tiny", cache_dir=str(tmp_path / "cache"))
    again = fresh.encode(_create_dataloader_from_texts(texts), task_metadata=meta, hf_split="test",
                         hf_subset="default", prompt_type="query")
    assert fresh.stats.encoded == 0 and np.allclose(again, q)


def test_evaluate_dtype_sets_decoder_precision_and_cache_key(tiny_model_dir):
    from embedforge.embedders import load_embedder
    from embedforge.evaluate.runner import models_to_run

    base = [f"model.backbone={tiny_model_dir}", f"evaluate.baselines={{b: {{model: {tiny_model_dir}}}}}"]
    fp32 = models_to_run(load_config(None, base))
    bf16 = models_to_run(load_config(None, [*base, "evaluate.dtype=bfloat16"]))
    assert [s.dtype for _, s, _ in fp32] == ["float32", "float32"]
    assert [s.dtype for _, s, _ in bf16] == ["bfloat16", "bfloat16"]
    # bf16 vectors never come out of (or go into) the float32 cache.
    assert fp32[0][1].fingerprint() != bf16[0][1].fingerprint()
    texts = ["a claim about cells", "stocks fell sharply on monday"]
    a, b = load_embedder(fp32[0][1]).encode(texts), load_embedder(bf16[0][1]).encode(texts)
    assert a.dtype == b.dtype == np.float32
    assert (a * b).sum(1).min() > 0.99 and not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="evaluate.dtype"):
        load_config(None, ["evaluate.dtype=int8"])


def test_auto_dtype_is_bf16_only_where_bf16_is_native(tiny_model_dir):
    from embedforge.doctor import cpu_flags
    from embedforge.evaluate.runner import models_to_run
    from embedforge.models import auto_encoding_dtype

    assert auto_encoding_dtype("cpu", {"avx", "avx2", "fma"}) == "float32"  # AVX2 only: bf16 is emulated
    assert auto_encoding_dtype("cpu", {"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert auto_encoding_dtype("cpu", {"avx2", "amx_tile", "amx_bf16"}) == "bfloat16"
    assert auto_encoding_dtype("cpu", set()) == "float32"  # no /proc/cpuinfo: the safe choice
    assert auto_encoding_dtype("cuda", set()) == auto_encoding_dtype("cuda:1", set()) == "bfloat16"
    # The runner makes it concrete (the cache key and the loader never see "auto"), from this CPU's flags.
    runs = models_to_run(load_config(None, [f"model.backbone={tiny_model_dir}", "evaluate.dtype=auto"]))
    assert [s.dtype for _, s, _ in runs] == [auto_encoding_dtype("cpu", cpu_flags())]


def test_missing_model_path_is_named(tmp_path):
    from embedforge.evaluate.spec import ModelPathError, ModelSpec

    with pytest.raises(ModelPathError, match="model path '/nonexistent/model' does not exist"):
        ModelSpec(backbone="/nonexistent/model").fingerprint()


# ------------------------------------------------------------------------------ summary/config


def test_summary_files(tmp_path):
    table = summary_table({"mine": {"T1": 0.5, "T2": 0.25}}, {"T1": "ndcg_at_10", "T2": "accuracy"},
                          {"e5": {"T1": 0.75}})
    assert table["columns"] == ["mine", "e5 (published)"]
    assert table["rows"][1] == {"task": "T2", "metric": "accuracy", "mine": 0.25, "e5 (published)": None}
    md = to_markdown(table)
    assert "| T1 | ndcg_at_10 | 0.5000 | 0.7500 |" in md and "| T2 | accuracy | 0.2500 | – |" in md
    files = write_summary(tmp_path, table)
    assert Path(files["chart"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(files["json"]).read_text())["rows"][0]["mine"] == 0.5


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate.local_tasks.0.kind: Input should be 'beir', 'sts' or"):
        load_config(None, [f"evaluate.local_tasks=[{{kind: csv, path: {tmp_path}, name: X}}]"])
    with pytest.raises(ConfigError, match="task folder '/no/such/dir' does not exist"):
        load_config(None, ["evaluate.local_tasks=[{kind: sts, path: /no/such/dir, name: X}]"])
    with pytest.raises(ConfigError, match="repeated: SciFact"):
        load_config(None, [f"evaluate.local_tasks=[{{kind: beir, path: {tmp_path}, name: SciFact}}]",
                           "evaluate.tasks=[SciFact]"])
    with pytest.raises(ConfigError, match="a baseline needs a model, published scores, or both"):
        load_config(None, ["evaluate.baselines={x: {}}"])
    assert EvaluateConfig().tasks == [] and EvaluateConfig().num_actors == 1


# ------------------------------------------------- evaluate.corpus_labels: the corpus's own labeled queries


def _corpus_cfg(tmp_path, path, *extra):
    return load_config(None, [f"run.output_dir={tmp_path}", f"generate.corpus={{path: {path}}}",
                              "evaluate.corpus_labels={split: test}", *extra])


def test_a_beir_corpus_with_qrels_is_scored_on_them_under_the_papers_spelling_of_its_name(tmp_path):
    folder = _beir_folder(tmp_path / "scifact")
    for path in (folder, folder / "corpus.jsonl"):  # the folder, or its corpus.jsonl
        (task,) = evaluated_local_tasks(_corpus_cfg(tmp_path, path))
        assert (task.kind, task.name, task.split, Path(task.path)) == ("beir", "SciFact", "test", folder)
    (task,) = evaluated_local_tasks(_corpus_cfg(tmp_path, folder, "evaluate.corpus_labels.name=MyDocs"))
    assert task.name == "MyDocs"
    # a folder the table does not name keeps its own name
    other = _beir_folder(tmp_path / "notes_v2")
    assert [t.name for t in evaluated_local_tasks(_corpus_cfg(tmp_path, other))] == ["notes_v2"]
    # what evaluation (and the contamination filter) builds: the task, its judged query read from the folder
    from embedforge.evaluate.runner import build_tasks

    (built,) = build_tasks([], evaluated_local_tasks(_corpus_cfg(tmp_path, folder)))
    assert built.metadata.name == "SciFact" and built.metadata.type == "Retrieval"
    assert list(built.dataset["default"]["test"]["queries"]["text"]) == ["what sound do cats make"]


def test_a_corpus_without_labeled_queries_adds_no_task(tmp_path):
    folder = _beir_folder(tmp_path / "scifact")
    (folder / "qrels" / "test.tsv").unlink()  # no qrels for the split
    assert evaluated_local_tasks(_corpus_cfg(tmp_path, folder)) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# A note\nSome text.")
    assert evaluated_local_tasks(_corpus_cfg(tmp_path, tmp_path / "notes")) == []
    labeled = _beir_folder(tmp_path / "labeled")
    assert evaluated_local_tasks(_corpus_cfg(tmp_path, labeled, "evaluate.corpus_labels=null")) == []
    assert evaluated_local_tasks(_corpus_cfg(tmp_path, labeled, "evaluate.corpus_labels.split=dev")) == []


def test_corpus_labels_neither_repeat_a_local_task_nor_take_its_name(tmp_path):
    folder = _beir_folder(tmp_path / "scifact")
    same = _corpus_cfg(tmp_path, folder, f"evaluate.local_tasks=[{{kind: beir, path: {folder}/, name: SciFact}}]")
    assert [t.name for t in evaluated_local_tasks(same)] == ["SciFact"]
    other = _beir_folder(tmp_path / "other")
    with pytest.raises(ConfigError, match="evaluate.corpus_labels: .* task 'SciFact', a name another evaluated task has"):
        evaluated_local_tasks(_corpus_cfg(tmp_path, folder, f"evaluate.local_tasks=[{{kind: beir, path: {other}, name: SciFact}}]"))


def test_evaluation_says_so_only_when_the_corpus_has_no_labeled_queries(tmp_path, capsys):
    from embedforge.evaluate.runner import evaluate_model

    folder = _beir_folder(tmp_path / "scifact")
    missing_model = "evaluate.baselines={b: {model: /nonexistent/base}}"  # stops the run before any encoding
    # the corpus's folder named again as a local task: scored once, and it has labels (nothing to say)
    same = _corpus_cfg(tmp_path, folder, missing_model, f"evaluate.local_tasks=[{{kind: beir, path: {folder}, name: SciFact}}]")
    with pytest.raises(ConfigError, match="/nonexistent/base"):
        evaluate_model(same)
    assert "has no labeled queries" not in capsys.readouterr().out
    (folder / "qrels" / "test.tsv").unlink()
    other = _beir_folder(tmp_path / "other")
    unlabeled = _corpus_cfg(tmp_path, folder, missing_model, f"evaluate.local_tasks=[{{kind: beir, path: {other}, name: T}}]")
    with pytest.raises(ConfigError, match="/nonexistent/base"):
        evaluate_model(unlabeled)
    assert "has no labeled queries" in capsys.readouterr().out


def test_corpus_labels_fingerprint_as_the_local_task_they_stand_for(tmp_path):
    """A run configured with the folder as a local task and one with corpus_labels generate the same data
    (the contamination filter guards the same queries): the generate stage's fingerprint agrees."""
    from embedforge.pipeline import stage_fingerprints

    folder = _beir_folder(tmp_path / "scifact")
    guard = "generate.contamination.against_evaluation=true"
    derived = _corpus_cfg(tmp_path, folder, guard)
    explicit = load_config(None, [f"run.output_dir={tmp_path}", f"generate.corpus={{path: {folder}}}", guard,
                                  f"evaluate.local_tasks=[{{kind: beir, path: {folder}, name: SciFact}}]"])
    without = load_config(None, [f"run.output_dir={tmp_path}", f"generate.corpus={{path: {folder}}}", guard])
    assert stage_fingerprints(derived)["generate"] == stage_fingerprints(explicit)["generate"]
    assert stage_fingerprints(derived)["generate"] != stage_fingerprints(without)["generate"]


def test_runner_rejects_no_tasks_and_bad_folders_before_loading_models(tmp_path):
    from embedforge.evaluate.runner import evaluate_model

    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="no tasks configured"):
        evaluate_model(cfg)
    folder = _beir_folder(tmp_path / "t")
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "evaluate.baselines={b: {model: /nonexistent/base}}",
                             f"evaluate.local_tasks=[{{kind: beir, path: {folder}, name: T}}]"])
    with pytest.raises(ConfigError, match="model path '/nonexistent/base' does not exist"):
        evaluate_model(cfg)
    (folder / "qrels" / "test.tsv").unlink()
    cfg = load_config(None, [f"run.output_dir={tmp_path}",
                             f"evaluate.local_tasks=[{{kind: beir, path: {folder}, name: T}}]"])
    with pytest.raises(FormatError, match=r"missing file: .*qrels/test.tsv"):
        evaluate_model(cfg)
    assert not (tmp_path / "run" / "evaluate").exists()
