"""generate/validation.py: teacher output checked and mapped to rows, brainstorms, dedupe."""

from __future__ import annotations

import json

import pytest

from embedforge.generate.taxonomy import load_template
from embedforge.generate.validation import (
    Deduper,
    Rejected,
    normalize,
    parse_brainstorm,
    to_row,
    validate_example,
)
from embedforge.schema import SYNTHETIC_GROUPS, TrainingRow
from tests.unit.generate_samples import GOOD


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


def test_brainstorm_keeps_distinct_tasks_of_three_or_more_words_and_rejects_bad_output():
    assert parse_brainstorm('{"tasks": ["Retrieve news articles.", "Find similar legal cases."]}') == [
        "Retrieve news articles.", "Find similar legal cases."]
    assert parse_brainstorm('["Retrieve news articles.", "retrieve NEWS articles", "ok"]') == ["Retrieve news articles."]
    for bad, reason in [('{"tasks": []}', "empty"), ("nonsense", "invalid_json"), ('{"tasks": [1]}', "not_string"),
                        ('{"a": 1}', "missing_key")]:
        with pytest.raises(Rejected) as exc:
            parse_brainstorm(bad)
        assert exc.value.reason == reason


def test_dedupe_on_normalised_text():
    d = Deduper()
    assert d.add({"group": "sts", "query": "A man plays.", "positive": "Someone plays."})
    assert not d.add({"group": "sts", "query": "a  MAN plays", "positive": "other"})
    assert not d.add({"group": "short_long", "query": "new query", "positive": "someone PLAYS!"})
    # classification positives are labels: repeating a label is not a duplicate
    assert d.add({"group": "long_short", "query": "text one", "positive": "negative"})
    assert d.add({"group": "long_short", "query": "text two", "positive": "negative"})
    assert normalize("Ｃafé,  NOW!") == "café now"


def test_a_sampled_length_below_the_minimum_lowers_it_for_that_row():
    """paper.yaml's min_words_long 20 rejected every long_short row whose prompt asked for "less than
    10" words; the row's own sampled length now bounds what validation asks."""
    short_input = json.dumps({"input_text": "great phone, battery lasts", "label": "positive",
                              "misleading_label": "negative"})
    t = load_template("long_short")
    asked_short = {"num_words": "less than 10"}
    assert validate_example(short_input, t, 1, 20, asked_short)["input_text"] == "great phone, battery lasts"
    assert _reason(short_input, "long_short", min_words_long=20, values={"num_words": "at least 50"}) == "too_short"
    assert _reason(short_input, "long_short", min_words_long=20) == "too_short"  # no values: the configured minimum


@pytest.mark.parametrize("group", SYNTHETIC_GROUPS)
def test_no_length_a_template_can_sample_is_rejected_by_validation(group):
    from embedforge.generate.taxonomy import word_range
    from embedforge.generate.validation import min_words

    t = load_template(group)
    assert set(t.length_of) <= set(t.keys) and set(t.length_of.values()) <= set(t.placeholders)
    for key, placeholder in t.length_of.items():
        for option in t.placeholders[placeholder]:
            _, most = word_range(option)
            least = min_words(key, t, 1, 20, {placeholder: option})
            assert most is None or least <= most, (group, key, option, least)


def test_word_ranges_of_the_papers_length_phrases():
    from embedforge.generate.taxonomy import word_range

    assert word_range("less than 10") == (1, 9)
    assert word_range("less than 5 words") == (1, 4)
    assert word_range("5 to 15 words") == (5, 15)
    assert word_range("at least 10 words") == (10, None)
    assert word_range(50) == (50, None)
