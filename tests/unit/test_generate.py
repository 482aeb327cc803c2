"""Pure parts of the generate stage: sampling, templates, validation, dedupe, contamination, store."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from embedforge.config.generate import GenerateConfig, TeacherConfig
from embedforge.generate.pipeline import parse_outcome
from embedforge.generate.store import RunStore, summarize, teacher_reject_rates
from embedforge.generate.taxonomy import (
    BRAINSTORM_SCHEMA,
    brainstorm_calls_needed,
    brainstorm_messages,
    choose_teacher,
    example_request,
    language_weights,
    load_template,
    render,
    row_seed,
    sample_placeholders,
    split_counts,
    unfilled,
)
from embedforge.generate.teachers import TokenBucket, response_format
from embedforge.generate.validation import (
    ContaminationIndex,
    Deduper,
    Rejected,
    normalize,
    parse_brainstorm,
    read_eval_texts,
    to_row,
    validate_example,
)
from embedforge.schema import SYNTHETIC_GROUPS, TrainingRow

GOOD = {
    "short_long": {"user_query": "how do vaccines train immunity",
                   "positive_document": "Vaccines expose the immune system to a harmless antigen so memory cells form.",
                   "hard_negative_document": "The history of smallpox spans thousands of years across many continents."},
    "long_short": {"input_text": "The battery died after two days and support never answered my emails.",
                   "label": "negative", "misleading_label": "neutral"},
    "short_short": {"input": "Paris", "positive_document": "capital city of France"},
    "long_long": {"input": "A long essay arguing that cities should ban cars from their centres to cut pollution.",
                  "positive_document": "A long rebuttal arguing that car bans hurt small shops and commuters from suburbs."},
    "sts": {"S1": "A man is playing a guitar.", "S2": "A man plays the guitar.", "S3": "A man is holding a violin."},
    "bitext": {"S1": "The cat sleeps on the sofa.", "S2": "Le chat dort sur le canapé.", "S3": "Le chien dort sur le lit."},
}


# ----------------------------------------------------------------------------------- sampling


def test_placeholders_are_reproducible_per_row_and_vary_across_rows():
    langs = language_weights()
    t = load_template("short_long")
    a = sample_placeholders(t, random.Random(row_seed(0, "short_long-0000001")), langs)
    b = sample_placeholders(t, random.Random(row_seed(0, "short_long-0000001")), langs)
    assert a == b
    many = [sample_placeholders(t, random.Random(row_seed(0, f"short_long-{i:07d}")), langs) for i in range(200)]
    assert len({json.dumps(m, sort_keys=True) for m in many}) > 150
    # a different run seed gives different rows
    assert sample_placeholders(t, random.Random(row_seed(1, "short_long-0000001")), langs) != a or \
        sample_placeholders(t, random.Random(row_seed(1, "short_long-0000002")), langs) != many[2]


def test_placeholder_and_language_distributions():
    langs = language_weights()
    assert len(langs) >= 93
    t = load_template("short_long")
    n = 6000
    draws = [sample_placeholders(t, random.Random(row_seed(7, f"r{i}")), langs) for i in range(n)]
    english = sum(d["language"] == "English" for d in draws) / n
    assert 0.40 <= english <= 0.47  # the paper ended at 43% English
    counts = Counter(d["language"] for d in draws)
    assert counts["German"] > 3 * counts["Swahili"]  # high-resource languages favoured
    for name, options in t.placeholders.items():
        c = Counter(d[name] for d in draws)
        assert set(c) == set(options)
        expected = n / len(options)
        assert all(abs(v - expected) < 0.12 * expected for v in c.values()), (name, c)


def test_language_overrides_and_errors():
    only = language_weights({name: 0 for name in language_weights() if name not in ("English", "French")})
    assert set(only) == {"English", "French"}
    with pytest.raises(ValueError, match="not an XLM-R language.*English"):
        language_weights({"Klingon": 1})


def test_bitext_languages_differ_and_teacher_weights():
    langs = language_weights()
    t = load_template("bitext")
    for i in range(200):
        v = sample_placeholders(t, random.Random(i), langs)
        assert v["src_lang"] != v["tgt_lang"]
    picks = Counter(choose_teacher(0, f"x-{i}", {"gpt-4": 0.75, "gpt-3.5": 0.25}) for i in range(4000))
    assert 0.72 < picks["gpt-4"] / 4000 < 0.78
    assert choose_teacher(0, "x-1", {"a": 1, "b": 1}) == choose_teacher(0, "x-1", {"a": 1, "b": 1})


def test_split_counts_exact_and_paper_mix():
    mix = {"short_long": 167, "long_short": 122, "sts": 99, "bitext": 89, "long_long": 17, "short_short": 13}
    counts = split_counts(507_000, mix)  # the paper's per-group counts (they sum to 507k, "500k")
    assert sum(counts.values()) == 507_000 and counts["short_long"] == 167_000 and counts["short_short"] == 13_000
    assert sum(split_counts(500_000, mix).values()) == 500_000
    small = split_counts(7, {g: 1 for g in SYNTHETIC_GROUPS})
    assert sum(small.values()) == 7 and max(small.values()) - min(small.values()) == 1
    assert brainstorm_calls_needed(45, 20, 1) == 3 and brainstorm_calls_needed(0, 20, 1) == 0


# ---------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("group", SYNTHETIC_GROUPS)
def test_templates_render_for_every_group(group):
    t = load_template(group)
    req = example_request(t, f"{group}-0000003", 3, ["Retrieve recipes for a dish."], 0, language_weights(), 1)
    prompt = json.loads(req["messages"])[0]["content"]
    assert not unfilled(prompt, t)
    for key in t.keys:
        assert f'"{key}"' in prompt
    values = json.loads(req["values"])
    for name in t.placeholders:
        assert str(values[name]) in prompt
    assert set(json.loads(req["schema"])["required"]) == set(t.keys)
    assert req["task"] and "{" not in req["task"]
    if t.has_brainstorm:
        assert "Retrieve recipes for a dish." in prompt and req["task"] == "Retrieve recipes for a dish."
        bs = brainstorm_messages(t, 20)[0]["content"]
        assert "20" in bs and "{num_tasks}" not in bs
        assert t.fallback_tasks
    assert (group in ("sts", "bitext")) == (not t.has_brainstorm)


def test_render_leaves_unknown_braces():
    assert render('{"a": {x}} {y}', {"x": 1}) == '{"a": 1} {y}'


def test_rows_per_task_assigns_task_definitions():
    t = load_template("short_short")
    tasks = ["Task one is here.", "Task two is here."]
    got = [example_request(t, f"short_short-{i:07d}", i, tasks, 0, language_weights(), 2)["task"] for i in range(6)]
    assert got == [tasks[0], tasks[0], tasks[1], tasks[1], tasks[0], tasks[0]]


# --------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("group", SYNTHETIC_GROUPS)
def test_good_outputs_map_to_the_shared_schema(group):
    t = load_template(group)
    fields = validate_example(json.dumps(GOOD[group]), t)
    req = {"id": f"{group}-0000001", "task": "t", "language": "English"}
    row = to_row(fields, t, req, "teacher-a", (10, 20))
    assert isinstance(row, TrainingRow) and row.group == group and row.completion_tokens == 20
    q, p, negs = {
        "short_long": ("user_query", "positive_document", ["hard_negative_document"]),
        "long_short": ("input_text", "label", ["misleading_label"]),
        "short_short": ("input", "positive_document", []),
        "long_long": ("input", "positive_document", []),
        "sts": ("S1", "S2", ["S3"]),
        "bitext": ("S1", "S2", ["S3"]),
    }[group]
    assert row.query == GOOD[group][q] and row.positive == GOOD[group][p]
    assert row.negatives == [GOOD[group][k] for k in negs]


def _reason(text, group="sts", **kw):
    with pytest.raises(Rejected) as exc:
        validate_example(text, load_template(group), **kw)
    return exc.value.reason


def test_bad_outputs_are_rejected_with_reasons():
    assert _reason("not json at all") == "invalid_json"
    assert _reason('{"S1": "a b", "S2": "c d"') == "invalid_json"
    assert _reason("[1, 2]") == "invalid_json"
    assert _reason('{"S1": "a", "S2": "b"}') == "missing_key"
    assert _reason('{"S1": "a", "S2": "b", "S3": "c", "S4": "d"}') == "missing_key"
    assert _reason('{"S1": "a", "S2": 5, "S3": "c"}') == "not_string"
    assert _reason('{"S1": "a", "S2": "  ", "S3": "c"}') == "empty"
    assert _reason('{"S1": "A man.", "S2": "a MAN", "S3": "c"}') == "same_text"
    assert _reason('{"S1": ".3", "S2": "a man", "S3": "c"}') == "no_words"
    assert _reason('{"input_text": "the text here is long enough", "label": "pos", "misleading_label": "Pos"}', "long_short") == "same_text"
    assert _reason(json.dumps({**GOOD["short_long"], "positive_document": "too short"}), "short_long",
                   min_words_long=5) == "too_short"


def test_wrapped_json_is_accepted():
    text = json.dumps(GOOD["sts"])
    t = load_template("sts")
    assert validate_example(f"```json\n{text}\n```", t)["S1"] == GOOD["sts"]["S1"]
    assert validate_example(f"Sure! Here it is: {text} Hope this helps.", t)["S2"] == GOOD["sts"]["S2"]


def test_brainstorm_parsing():
    assert parse_brainstorm('{"tasks": ["Retrieve news articles.", "Find similar legal cases."]}') == [
        "Retrieve news articles.", "Find similar legal cases."]
    assert parse_brainstorm('["Retrieve news articles.", "retrieve NEWS articles", "ok"]') == ["Retrieve news articles."]
    for bad, reason in [('{"tasks": []}', "empty"), ("nonsense", "invalid_json"), ('{"tasks": [1]}', "not_string"),
                        ('{"a": 1}', "missing_key")]:
        with pytest.raises(Rejected) as exc:
            parse_brainstorm(bad)
        assert exc.value.reason == reason


def _teacher_result(text, group="sts", kind="example", error="", finish="stop"):
    return {"id": f"{group}-0000001", "group": group, "kind": kind, "teacher": "t", "language": "English",
            "task": "Retrieve semantically similar text.", "text": text, "prompt_tokens": 5, "completion_tokens": 7,
            "latency_s": 0.1, "error": error, "finish_reason": finish, "max_tokens": 64}


def test_parse_outcome_statuses():
    ok = parse_outcome(_teacher_result(json.dumps(GOOD["sts"])), 1, 3)
    assert ok["status"] == "kept" and json.loads(ok["payload"])["positive"] == GOOD["sts"]["S2"]
    cut = parse_outcome(_teacher_result('{"S1": "a man', finish="length"), 1, 3)
    assert (cut["status"], cut["reason"]) == ("rejected", "truncated")
    err = parse_outcome(_teacher_result("", error="APITimeoutError: timed out"), 1, 3)
    assert err["reason"] == "request_error" and "timed out" in err["detail"]
    bs = parse_outcome(_teacher_result('{"tasks": ["Retrieve news articles."]}', "short_long", "brainstorm"), 1, 3)
    assert bs["status"] == "kept" and json.loads(bs["payload"]) == ["Retrieve news articles."]


# ------------------------------------------------------------------------- dedupe, contamination


def test_dedupe_on_normalised_text():
    d = Deduper()
    assert d.add({"group": "sts", "query": "A man plays.", "positive": "Someone plays."})
    assert not d.add({"group": "sts", "query": "a  MAN plays", "positive": "other"})
    assert not d.add({"group": "short_long", "query": "new query", "positive": "someone PLAYS!"})
    # classification positives are labels: repeating a label is not a duplicate
    assert d.add({"group": "long_short", "query": "text one", "positive": "negative"})
    assert d.add({"group": "long_short", "query": "text two", "positive": "negative"})
    assert normalize("Ｃafé,  NOW!") == "café now"


def test_contamination_exact_and_ngram():
    evals = ["A plane is taking off.", " ".join(f"w{i}" for i in range(30))]
    idx = ContaminationIndex(evals, ngram=8)
    assert idx.match("a PLANE is taking off") == "exact"
    assert idx.match("prefix words " + " ".join(f"w{i}" for i in range(5, 14)) + " suffix") == "ngram"
    assert idx.match("w1 w2 w3 w4 w5 w6 w7") is None  # shorter than the n-gram
    assert idx.match("A plane is landing.") is None
    assert idx.check_row({"query": "x", "positive": "y", "negatives": ["a plane is taking off"]}) == "negative exact"


def test_contamination_against_real_eval_files(shared_data):
    texts = read_eval_texts(shared_data / "stsb" / "test.tsv")
    assert len(texts) > 2000
    idx = ContaminationIndex(texts)
    assert idx.match(texts[5]) == "exact"
    scifact = read_eval_texts(shared_data / "scifact" / "queries.jsonl")
    assert len(scifact) > 1000
    with pytest.raises(FileNotFoundError, match="eval_files"):
        read_eval_texts(shared_data / "nope.tsv")


# ---------------------------------------------------------------------------- limits, formats


def test_token_bucket_spaces_requests():
    b = TokenBucket(60, now=0.0)  # one a second, a minute's burst
    assert all(b.reserve(1, now=0.0) == 0 for _ in range(60))
    assert b.reserve(1, now=0.0) == pytest.approx(1.0)
    assert b.reserve(1, now=0.0) == pytest.approx(2.0)
    assert b.reserve(1, now=10.0) == 0  # refilled
    assert TokenBucket(None).reserve(10**9) == 0


def test_response_format_modes():
    schema = load_template("sts").json_schema()
    assert response_format("json_schema", schema)["json_schema"]["schema"] == schema
    llama = response_format("json_object_schema", schema)
    assert llama["type"] == "json_object" and llama["schema"]["properties"]["S1"]["minLength"] == 1
    assert response_format("none", schema) is None
    assert response_format("json_schema", BRAINSTORM_SCHEMA)["json_schema"]["schema"]["required"] == ["tasks"]


def test_config_errors_name_fields():
    with pytest.raises(Exception, match="groups"):
        GenerateConfig(groups={"qa": 1})
    with pytest.raises(Exception, match="unique"):
        GenerateConfig(teachers=[TeacherConfig(name="a", model="m"), TeacherConfig(name="a", model="n")])
    with pytest.raises(Exception, match="response_format"):
        TeacherConfig(name="a", model="m", response_format="json")
    with pytest.raises(ValueError, match="EF_NO_SUCH_KEY"):
        TeacherConfig(name="a", model="m", api_key_env="EF_NO_SUCH_KEY").api_key()


# ------------------------------------------------------------------------------ store (resume)


def _outcome(i, group="sts", status="kept", reason="", query=None):
    row = TrainingRow(id=f"{group}-{i:07d}", group=group, task="t", query=query or f"query {i}",
                      positive=f"positive {i}", negatives=[f"neg {i}"], teacher="t").to_dict()
    return {"id": row["id"], "group": group, "kind": "example", "teacher": "t", "language": "English",
            "raw": "{}", "prompt_tokens": 3, "completion_tokens": 4, "latency_s": 0.0, "status": status,
            "reason": reason, "detail": "", "payload": json.dumps(row)}


def test_committer_dedupes_caps_and_resumes(tmp_path):
    from embedforge.generate.runner import Committer

    cfg = GenerateConfig(shard_rows=2)
    store = RunStore(tmp_path)
    c = Committer(store, cfg, {"sts": 3}, [], [])
    for out in [_outcome(0), _outcome(1, query="QUERY 0"), _outcome(2, status="rejected", reason="empty"), _outcome(3)]:
        c.add(out)
    c.flush()
    # a shard killed before its commit: data written, no commit → removed at load
    (store.data_dir / "synthetic-s999999.parquet").write_bytes(b"partial")
    state = store.load()
    assert not (store.data_dir / "synthetic-s999999.parquet").exists()
    assert state.kept_per_group() == {"sts": 2} and len(state.kept_rows) == 2
    c2 = Committer(store, cfg, {"sts": 3}, state.records, state.kept_rows)
    assert c2.missing() == {"sts": 1}
    assert not c2.add(_outcome(4, query="query 3"))  # duplicate of a committed row
    assert c2.add(_outcome(5))
    assert not c2.add(_outcome(6))  # surplus
    c2.flush()
    state = store.load()
    assert state.kept_per_group() == {"sts": 3} and state.next_index("sts") == 7
    reasons = Counter(r["reason"] for r in state.records if r["status"] != "kept")
    assert reasons == {"duplicate": 2, "empty": 1, "surplus": 1}
    rejects = [json.loads(line) for p in (store.gen_dir / "rejects").glob("*.jsonl") for line in p.open()]
    assert sorted(r["reason"] for r in rejects) == ["duplicate", "duplicate", "empty", "surplus"] and all("raw" in r for r in rejects)
    s = summarize(state.records, {"t": (1.0, 2.0)}, 10.0, state.records)
    assert s["rows"] == 3 and s["tokens"]["t"]["sts"]["calls"] == 7
    assert s["cost_usd"] == pytest.approx(7 * (3 * 1.0 + 4 * 2.0) / 1000)


def test_reject_rate_stops_a_failing_teacher(tmp_path):
    from embedforge.generate.runner import Committer
    from embedforge.generate.teachers import TeacherError

    cfg = GenerateConfig(shard_rows=100, reject_min_attempts=5, max_reject_rate=0.5)
    c = Committer(RunStore(tmp_path), cfg, {"sts": 10}, [], [])
    for i in range(6):
        c.add(_outcome(i, status="rejected", reason="invalid_json"))
    with pytest.raises(TeacherError, match="teacher 't' failed 6 of its last 6"):
        c.flush()
    assert teacher_reject_rates(RunStore(tmp_path).load().records) == {"t": (6, 6)}  # committed before stopping


# ---------------------------------------------------------------------------------- labeled data


def test_labeled_loaders(shared_data, tmp_path):
    import pyarrow.parquet as pq

    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled, write_labeled
    from embedforge.schema import arrow_schema

    beir = load_labeled(LabeledDatasetConfig(kind="beir", name="scifact", path=str(shared_data / "scifact"),
                                             task="Given a scientific claim, retrieve documents that support or refute the claim"))
    assert 800 <= len(beir) <= 919 and beir[0].group == "retrieval" and len(beir[0].positive) > 100
    sts = load_labeled(LabeledDatasetConfig(kind="sts_pairs", name="stsb", path=str(shared_data / "stsb" / "train.tsv"),
                                            task="Retrieve semantically similar text.", score_threshold=4.0))
    assert 1000 < len(sts) < 3000 and sts[0].query == "A plane is taking off."
    msrp = load_labeled(LabeledDatasetConfig(kind="pair_classification", name="msrp", task="Retrieve paraphrases.",
                                             path=str(shared_data / "msrp" / "train.tsv")))
    assert 2000 < len(msrp) < 3000
    cls_cfg = LabeledDatasetConfig(kind="classification", name="banking77", path=str(shared_data / "banking77" / "train.tsv"),
                                   task="Given an online banking query, find the corresponding intents", sample_ratio=0.1)
    cls = load_labeled(cls_cfg, seed=3)
    assert 800 < len(cls) < 1200
    assert all(r.negatives and r.negatives[0] != r.positive for r in cls)
    assert [r.id for r in load_labeled(cls_cfg, seed=3)] == [r.id for r in cls]  # seeded sample
    counts = write_labeled([cls_cfg], tmp_path, seed=3)
    table = pq.read_table(tmp_path / "labeled-banking77.parquet")
    assert table.schema == arrow_schema() and table.num_rows == counts["banking77"] == len(cls)
    with pytest.raises(FileNotFoundError, match="queries.jsonl missing"):
        load_labeled(LabeledDatasetConfig(kind="beir", name="x", path=str(shared_data / "stsb"), task="t"))
