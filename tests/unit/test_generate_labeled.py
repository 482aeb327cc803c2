"""generate/labeled.py: labeled data sets as rows: the generic layouts (BEIR, STS pairs, pair
classification, classification) and the paper's 14 sets, each converter on a fixture in its set's real format."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedforge.formats import FormatError, write_beir


def test_labeled_loaders_read_each_kind_sample_by_seed_and_write_the_shared_schema(shared_data, tmp_path):
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
    with pytest.raises(FormatError, match=r"missing file: .*stsb/qrels/train.tsv"):
        load_labeled(LabeledDatasetConfig(kind="beir", name="x", path=str(shared_data / "stsb"), task="t"))


def test_classification_example_positives_pair_texts_of_one_label_and_sample_the_same_rows(tmp_path):
    """positive: example — the positive is another text of the row's label, the negative a text of another
    label, never a label's name; a text alone in its label gives no row; one seed samples the same rows as
    positive: label; the option is refused on other kinds, naming the field and the kind."""
    from pydantic import ValidationError

    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.formats import write_classification
    from embedforge.generate.labeled import load_labeled

    rows = [{"text": f"where is my card {i}", "label": "card_arrival"} for i in range(4)]
    rows += [{"text": f"how do I top up {i}", "label": "top_up"} for i in range(3)]
    rows += [{"text": "my pin is blocked", "label": "pin_blocked"}]  # alone in its label
    path = write_classification(tmp_path / "train.tsv", rows)
    label_of = {r["text"]: r["label"] for r in rows}

    def cfg(positive, tsv=path, ratio=1.0):
        return LabeledDatasetConfig(kind="classification", name="bank", path=str(tsv), task="t",
                                    positive=positive, sample_ratio=ratio)

    examples = load_labeled(cfg("example"), seed=1)
    assert len(examples) == 7 and "my pin is blocked" not in {r.query for r in examples}
    for r in examples:
        assert r.positive != r.query and label_of[r.positive] == label_of[r.query]
        assert len(r.negatives) == 1 and label_of[r.negatives[0]] != label_of[r.query]
    labels = load_labeled(cfg("label"), seed=1)
    assert {r.positive for r in labels} == {"card arrival", "top up", "pin blocked"}
    big = write_classification(tmp_path / "big.tsv", [{"text": f"text {i}", "label": f"l{i % 5}"} for i in range(200)])
    by_label, by_example = (load_labeled(cfg(p, big, 0.3), seed=2) for p in ("label", "example"))
    assert 30 < len(by_label) < 90
    assert [r.query for r in by_label] == [r.query for r in by_example]
    with pytest.raises(ValidationError, match=r"`positive: example` is for kind classification; kind 'sts_pairs'"):
        LabeledDatasetConfig(kind="sts_pairs", name="s", path=str(path), task="t", positive="example")
    with pytest.raises(ValidationError, match=r"positive\n.*'label' or 'example'"):
        LabeledDatasetConfig(kind="classification", name="s", path=str(path), task="t", positive="examples")


def test_labeled_beir_keeps_positive_judgements_as_title_and_text(tmp_path):
    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    corpus = {"d1": {"title": "Cats", "text": "Cats purr."}, "d2": {"title": "", "text": "Stocks fell."}}
    folder = write_beir(tmp_path / "b", corpus, {"q1": "what sound do cats make"}, {"q1": {"d1": 1, "d2": 0}},
                        split="train")
    rows = load_labeled(LabeledDatasetConfig(kind="beir", name="b", path=str(folder), task="t"))
    assert [(r.query, r.positive) for r in rows] == [("what sound do cats make", "Cats Cats purr.")]
    # One strictness for every reader of BEIR: a judgement naming an unknown document is an error.
    write_beir(folder, corpus, {"q1": "q"}, {"q1": {"d9": 1}}, split="train")
    with pytest.raises(FormatError, match=r"qrels/train.tsv:2: corpus-id 'd9' is not in corpus.jsonl"):
        load_labeled(LabeledDatasetConfig(kind="beir", name="b", path=str(folder), task="t"))


# ---------------------------------------------------------------- the paper's labeled sets (fixtures)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "labeled"

# kind, fixture (under tests/fixtures/labeled), the rows it must give: (query, positive, negatives) with
# the default of one hard negative.
CONVERTER_CASES = {
    "ms_marco": ("msmarco-passage/train.jsonl", [
        ("when was the eiffel tower built", "The Eiffel Tower was finished in 1889 for the World's Fair held in Paris.",
         ["The Louvre in Paris is the most visited art museum in the world."]),
        ("how many miles is a kilometre", "To convert kilometres to miles, multiply the distance by 0.621.",
         ["A nautical mile is based on the circumference of the Earth."]),
        # "do sharks sleep" has no selected passage: no row
        ("why are bananas good for you", "Bananas are rich in potassium and are often eaten before exercise.",
         ["Apples contain fibre called pectin."]),
        ("why are bananas good for you", "Potassium helps muscles contract and keeps the heart rhythm steady.",
         ["Apples contain fibre called pectin."]),
    ]),
    "msmarco_passage": ("msmarco-passage", [
        ("when was the eiffel tower built", "The Eiffel Tower was finished in 1889 for the World's Fair held in Paris.", []),
        ("how many miles is a kilometre", "To convert kilometres to miles, multiply the distance by 0.621.", []),
        ("how many miles is a kilometre", 'A kilometre is "one thousand metres", a unit of length in the metric system.', []),
        ("why are bananas good for you", "Bananas are rich in potassium and are often eaten before exercise.", []),
    ]),
    "msmarco_document": ("msmarco-document", [
        ("green tea water temperature", "How to brew green tea Heat the water to about 80 degrees, not boiling, and "
                                        "steep the leaves for two minutes.", []),
        ("how to patch a bike tube", "Fixing a flat bicycle tire Remove the wheel, lever off the tire, find the hole "
                                     "and patch the inner tube.", []),
        ("how often to feed sourdough starter", "Sourdough starter care Feed the starter with equal weights of flour "
                                                "and water every day.", []),
    ]),
    "t2ranking": ("t2ranking", [
        ("鹦鹉用什么磨牙比较好", "鹦鹉可以用专门的磨牙石或者干净的木块来磨牙。", ["鹦鹉喜欢啃咬塑料玩具，但塑料碎片可能被误食。"]),
        ("营业执照快到期了怎么办理", "营业执照到期前应当去市场监督管理部门办理延期。", []),  # its only level-0 passage: none
        ("营业执照快到期了怎么办理", "营业执照的有效期一般与公司的经营期限相同。", []),
        ("影子的形成原理是什么", "影子是光沿直线传播时被不透明物体挡住形成的。", ["镜子可以反射光线，形成和物体一样大小的像。"]),
    ]),
    "tevatron": ("nq/nq-train.jsonl", [
        ("who painted the ceiling of the sistine chapel",
         "Sistine Chapel ceiling The ceiling was painted by Michelangelo between 1508 and 1512.",
         ["Sistine Chapel The chapel takes its name from Pope Sixtus IV."]),
        ("what is the capital city of australia", "Canberra Canberra is the capital city of Australia, chosen as a compromise.",
         ["Sydney Sydney is the largest city in Australia."]),
        ("what is the capital city of australia",
         "Australian Capital Territory The territory contains Canberra, the national capital.",
         ["Sydney Sydney is the largest city in Australia."]),
        ("how many strings does a standard violin have", "Violin A standard violin has four strings tuned in perfect fifths.",
         ["Viola The viola is slightly larger than the violin."]),
    ]),
    "hotpot_qa": ("hotpotqa/train.jsonl", [
        ("Which city is home to the museum that holds the painting by the artist born in Vinci?",
         "Leonardo da Vinci Leonardo da Vinci was born in Vinci in 1452. He painted the Mona Lisa.",
         ["Vinci, Tuscany Vinci is a town in Tuscany. It is known for its castle."]),
        ("Which city is home to the museum that holds the painting by the artist born in Vinci?",
         "Mona Lisa The Mona Lisa is a portrait. It hangs in the Louvre in Paris.",
         ["Vinci, Tuscany Vinci is a town in Tuscany. It is known for its castle."]),
        ("Are the Amazon and the Danube both longer than 2,000 km?", "Danube The Danube is about 2,850 km long.",
         ["Rhine The Rhine flows from the Alps to the North Sea."]),
        ("Are the Amazon and the Danube both longer than 2,000 km?", "Amazon River The Amazon River is about 6,400 km long.",
         ["Rhine The Rhine flows from the Alps to the North Sea."]),
        ("What guitar did the guitarist of Queen build with his father?",
         "Brian May Brian May is the guitarist of Queen. He built the Red Special guitar with his father.",
         ["Freddie Mercury Freddie Mercury was the lead singer of Queen."]),
    ]),
    "nli": ("nli/train.jsonl", [  # neutral pairs and SNLI's unlabeled (-1) pairs give nothing
        ("A man is playing a guitar on stage.", "A man is performing music.", ["The man is sleeping at home."]),
        ("Two children are building a sandcastle at the beach.", "Kids are playing in the sand.",
         ["The children are in a classroom."]),
        ("A woman is reading a book in the park.", "A person is reading outdoors.", ["The woman is swimming in a lake."]),
    ]),
    "quora_duplicates": ("quora-duplicates/train.jsonl", [
        ("How can I learn to cook rice properly?", "What is the best way to cook rice?", ["How do I grow rice at home?"]),
        ("What is the fastest way to learn Python?", "How can I learn Python quickly?", ["Is Python faster than Java?"]),
        ("Why is the sky blue?", "What makes the sky look blue?", ["Why is the ocean salty?"]),
        ("How do I improve my handwriting?", "What are tips for better handwriting?", ["How do I improve my typing speed?"]),
    ]),
    "eli5": ("eli5/train.jsonl", [  # the highest-voted answer; of two equally voted, the first
        ("Why do cats purr?", "Purring can also help them heal, some scientists think.", []),
        ("How do airplanes stay in the air?", "The wings push air down, so the air pushes the plane up.", []),
        ("Why does ice float on water?", "Ice is less dense than liquid water.", []),
    ]),
    "dureader": ("dureader/train.json", [
        ("绿茶用多少度的水泡", "泡绿茶的水温以八十度左右为宜，水太烫会把茶叶烫熟。", []),
        ("自行车胎漏气怎么补", "先拆下轮胎找到漏气的位置，打磨后涂胶水再贴上补丁。", []),
        ("自行车胎漏气怎么补", "补胎前把内胎放进水里，冒气泡的地方就是破洞。", []),
        ("面包为什么会发酸", "酸面包用的是天然酵种，乳酸菌发酵会产生酸味。", []),
    ]),
    "beir": ("fever", [
        ("The Great Wall of China was built to protect borders.",
         "Great Wall of China The Great Wall of China was built over many centuries to protect northern borders.", []),
        ("The Moon has two natural satellites of its own.", "Moon The Moon is Earth's only natural satellite.", []),
        ("The Atlantic is the largest ocean on Earth.",
         "Pacific Ocean The Pacific Ocean is the largest and deepest ocean on Earth.", []),
    ]),
}


@pytest.mark.parametrize("kind", sorted(CONVERTER_CASES))
def test_each_converter_reads_its_sets_real_layout(kind):
    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import KIND_TO_GROUP, load_labeled

    fixture, expected = CONVERTER_CASES[kind]
    rows = load_labeled(LabeledDatasetConfig(kind=kind, name="x", path=str(FIXTURES / fixture), task="t"))
    assert [(r.query, r.positive, r.negatives) for r in rows] == expected
    assert {r.group for r in rows} == {KIND_TO_GROUP[kind]}


def test_every_negative_the_source_gives_up_to_the_configured_count(tmp_path):
    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    def negatives(kind, fixture, n):
        ds = LabeledDatasetConfig(kind=kind, name="x", path=str(FIXTURES / fixture), task="t", negatives=n)
        return [r.negatives for r in load_labeled(ds)]

    assert negatives("tevatron", "nq/nq-train.jsonl", 0) == [[], [], [], []]
    assert negatives("tevatron", "nq/nq-train.jsonl", 5)[0] == [
        "Sistine Chapel The chapel takes its name from Pope Sixtus IV.",
        "Raphael Rooms Raphael decorated four rooms in the Apostolic Palace."]
    # hotpot: every other context paragraph, never the question's other supporting paragraph
    assert negatives("hotpot_qa", "hotpotqa/train.jsonl", 5)[0] == [
        "Vinci, Tuscany Vinci is a town in Tuscany. It is known for its castle."]


def test_a_folder_of_record_files_is_read_in_name_order_and_rows_take_the_instructions_in_turn():
    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    rows = load_labeled(LabeledDatasetConfig(kind="tevatron", name="miracl", path=str(FIXTURES / "miracl"),
                                             task=["first instruction", "second instruction"], language="multilingual"))
    assert [r.query for r in rows] == ["What is the boiling point of water at sea level?", "Where is the Great Barrier Reef?",
                                       "Mlima Kilimanjaro uko nchi gani?", "Ziwa Victoria linapakana na nchi zipi?"]
    assert [r.negatives for r in rows][1] == []  # a record without negative passages
    assert [r.task for r in rows] == ["first instruction", "second instruction"] * 2
    assert {r.language for r in rows} == {"multilingual"}


def test_parquet_and_gzipped_exports_give_the_same_rows_as_json_lines(tmp_path):
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    source = FIXTURES / "hotpotqa" / "train.jsonl"
    records = [json.loads(line) for line in source.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "train.jsonl.gz").write_bytes(gzip.compress(source.read_bytes()))
    (tmp_path / "array.json").write_text(json.dumps(records))

    def pairs(path):
        ds = LabeledDatasetConfig(kind="hotpot_qa", name="h", path=str(path), task="t")
        return [(r.query, r.positive, r.negatives) for r in load_labeled(ds)]

    expected = pairs(source)
    assert len(expected) == 5
    assert pairs(tmp_path / "train-00000-of-00001.parquet") == expected
    assert pairs(tmp_path / "gz") == expected
    assert pairs(tmp_path / "array.json") == expected


def test_a_record_without_a_field_its_layout_needs_fails_naming_file_line_and_field(tmp_path):
    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    bad = tmp_path / "train.jsonl"
    bad.write_text('{"query": "q", "positive_passages": [{"docid": "1", "text": "t"}]}\n{"query_id": "2", "query": "r"}\n')
    with pytest.raises(FormatError, match=r"train.jsonl:2: needs 'positive_passages' as a list, got nothing"):
        load_labeled(LabeledDatasetConfig(kind="tevatron", name="x", path=str(bad), task="t"))
    bad.write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n')
    with pytest.raises(FormatError, match=r"train.jsonl:1: label 'entailment' is not one of 0 \(entailment\)"):
        load_labeled(LabeledDatasetConfig(kind="nli", name="x", path=str(bad), task="t"))
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "collection.tsv").write_text("0\tp\n")
    (tmp_path / "q" / "queries.train.tsv").write_text("7\tq\n")
    (tmp_path / "q" / "qrels.train.tsv").write_text("7\t0\t0\t1\n7\t0\t9\t1\n")
    with pytest.raises(FormatError, match=r"qrels.train.tsv:2: document id '9' is not in collection.tsv"):
        load_labeled(LabeledDatasetConfig(kind="msmarco_passage", name="x", path=str(tmp_path / "q"), task="t"))


def test_a_hub_set_that_cannot_be_loaded_names_the_entry_and_the_local_path_way(monkeypatch):
    import datasets

    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'microsoft/ms_marco' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    ds = LabeledDatasetConfig(kind="ms_marco", name="MSMARCO", hub="microsoft/ms_marco", hub_config="v2.1", task="t")
    with pytest.raises(FormatError) as err:
        load_labeled(ds)
    msg = str(err.value)
    assert "'MSMARCO'" in msg and "microsoft/ms_marco (v2.1, train)" in msg and "Couldn't reach" in msg
    assert "`path`" in msg


def test_labeled_config_names_the_allowed_kinds_and_one_source(repo_root):
    from embedforge.config import ConfigError, load_config

    entry = "{kind: msmarco, name: m, path: p, task: t}"
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"generate.labeled=[{entry}]"])
    msg = str(err.value)
    assert "generate.labeled.0.kind" in msg and "'msmarco'" in msg
    for kind in ("beir", "ms_marco", "msmarco_passage", "msmarco_document", "tevatron", "t2ranking", "dureader"):
        assert f"'{kind}'" in msg
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        load_config(None, ["generate.labeled=[{kind: nli, name: n, path: p, hub: o/n, task: t}]"])
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        load_config(None, ["generate.labeled=[{kind: nli, name: n, task: t}]"])
    with pytest.raises(ConfigError, match="kind 'beir' reads local files"):
        load_config(None, ["generate.labeled=[{kind: beir, name: b, hub: BeIR/fever, task: t}]"])
    with pytest.raises(ConfigError, match="generate.labeled.0.task"):
        load_config(None, ["generate.labeled=[{kind: nli, name: n, path: p, task: []}]"])


# The paper's 14 sets (its §4.1 counts MS MARCO once): name -> (fixture, instruction(s), sample ratio,
# whether the set gives a hard negative for every row of its fixture).
PAPER_SETS = {
    "MSMARCO": ("msmarco-passage/train.jsonl", "Given a web search query, retrieve relevant passages that answer the query",
                0.5, True),
    "msmarco-document": ("msmarco-document", "Given a web search query, retrieve relevant documents that answer the query",
                         0.2, False),
    "NQ": ("nq/nq-train.jsonl", "Given a question, retrieve Wikipedia passages that answer the question", 1.0, True),
    "triviaqa": ("triviaqa/trivia-train.jsonl", "Retrieve Wikipedia passages that answer the question", 1.0, True),
    "squad": ("squad/squad-train.jsonl", "Retrieve Wikipedia passages that answer the question", 1.0, True),
    "HotpotQA": ("hotpotqa/train.jsonl", "Given a multi-hop question, retrieve documents that can help answer the question",
                 1.0, True),
    "FEVER": ("fever", "Given a claim, retrieve documents that support or refute the claim", 1.0, False),
    "eli5": ("eli5/train.jsonl", "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
             0.1, False),
    "quora-duplicates": ("quora-duplicates/train.jsonl",
                         ["Given a question, retrieve questions that are semantically equivalent to the given question",
                          "Find questions that have the same meaning as the input question"], 0.1, True),
    "nli": ("nli/train.jsonl", ["Given a premise, retrieve a hypothesis that is entailed by the premise",
                                "Retrieve semantically similar text"], 1.0, True),
    "MIRACLRetrieval": ("miracl", "Given a question, retrieve Wikipedia passages that answer the question", 1.0, None),
    "MrTidyRetrieval": ("mrtydi/train.jsonl", "Given a question, retrieve Wikipedia passages that answer the question",
                        1.0, None),
    "DuRetrieval": ("dureader/train.json", "Given a Chinese search query, retrieve web passages that answer the question",
                    1.0, False),
    "T2Retrieval": ("t2ranking", "Given a Chinese search query, retrieve web passages that answer the question", 0.5, None),
}


def _paper_on_fixtures(repo_root, **changes):
    """configs/paper.yaml with every labeled set read from its fixture instead of data/labeled or the hub."""
    from embedforge.config import load_config, with_values

    cfg = load_config(repo_root / "configs" / "paper.yaml")
    labeled = []
    for ds in cfg.generate.labeled:
        entry = ds.model_dump() | {"path": str(FIXTURES / PAPER_SETS[ds.name][0]), "hub": None, "hub_config": None}
        labeled.append(entry | changes)
    return cfg, with_values(cfg, **{"generate.labeled": labeled})


def test_paper_yaml_has_the_papers_labeled_sets_instructions_and_ratios(repo_root):
    from embedforge.config import load_config

    cfg = load_config(repo_root / "configs" / "paper.yaml")
    got = {ds.name: (ds.task, ds.sample_ratio) for ds in cfg.generate.labeled}
    assert got == {name: (task, ratio) for name, (_, task, ratio, _) in PAPER_SETS.items()}
    assert all(ds.negatives == 1 for ds in cfg.generate.labeled)  # the paper: one hard negative
    hub = {ds.name: (ds.hub, ds.hub_config) for ds in cfg.generate.labeled if ds.hub}
    assert hub == {"MSMARCO": ("microsoft/ms_marco", "v2.1"), "HotpotQA": ("hotpotqa/hotpot_qa", "distractor"),
                   "quora-duplicates": ("sentence-transformers/quora-duplicates", "triplet"),
                   "nli": ("sentence-transformers/all-nli", "pair-class")}
    assert all(ds.path.startswith("data/labeled/") for ds in cfg.generate.labeled if not ds.hub)


def test_paper_yaml_labeled_sets_load_from_fixture_folders(repo_root, tmp_path):
    import pyarrow.parquet as pq

    from embedforge.generate.labeled import write_labeled

    _, full = _paper_on_fixtures(repo_root, sample_ratio=1.0)
    counts = write_labeled(full.generate.labeled, tmp_path / "full", seed=0)
    assert set(counts) == set(PAPER_SETS) and all(n >= 3 for n in counts.values()), counts
    full_ids = {}
    for name, (_, task, _, with_negatives) in PAPER_SETS.items():
        rows = pq.read_table(tmp_path / "full" / f"labeled-{name}.parquet").to_pylist()
        tasks = [task] if isinstance(task, str) else task
        assert [r["task"] for r in rows] == [tasks[i % len(tasks)] for i in range(len(rows))], name
        assert all(r["query"].strip() and r["positive"].strip() for r in rows), name
        assert all(len(r["negatives"]) <= 1 for r in rows), name
        if with_negatives is not None:
            assert all(len(r["negatives"]) == int(with_negatives) for r in rows), name
        assert {r["source"] for r in rows} == {name}
        full_ids[name] = [r["id"] for r in rows]
    assert {r["language"] for r in pq.read_table(tmp_path / "full" / "labeled-T2Retrieval.parquet").to_pylist()} == {"Chinese"}

    # The paper's ratios: sets at 1.0 keep every row; the others a seeded share of them.
    _, paper = _paper_on_fixtures(repo_root)
    sampled = write_labeled(paper.generate.labeled, tmp_path / "paper", seed=0)
    for name, (_, _, ratio, _) in PAPER_SETS.items():
        ids = [r["id"] for r in pq.read_table(tmp_path / "paper" / f"labeled-{name}.parquet").to_pylist()]
        if ratio == 1.0:
            assert ids == full_ids[name], name
        else:
            assert set(ids) <= set(full_ids[name]), name
    below = [n for n, (_, _, ratio, _) in PAPER_SETS.items() if ratio < 1]
    assert sum(sampled[n] for n in below) < sum(counts[n] for n in below)
    assert write_labeled(paper.generate.labeled, tmp_path / "again", seed=0) == sampled  # seeded
