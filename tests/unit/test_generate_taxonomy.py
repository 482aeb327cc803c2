"""generate/taxonomy.py: seeded sampling of placeholders, languages and teachers; group counts; templates."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from embedforge.generate.taxonomy import (
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
from embedforge.schema import SYNTHETIC_GROUPS


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


def test_languages_favour_high_resource_ones_and_placeholder_options_are_uniform():
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


def test_language_overrides_drop_zero_weights_and_unknown_languages_are_refused():
    only = language_weights({name: 0 for name in language_weights() if name not in ("English", "French")})
    assert set(only) == {"English", "French"}
    with pytest.raises(ValueError, match="not an XLM-R language.*English"):
        language_weights({"Klingon": 1})


def test_bitext_languages_differ_and_teachers_are_picked_by_weight_reproducibly():
    langs = language_weights()
    t = load_template("bitext")
    for i in range(200):
        v = sample_placeholders(t, random.Random(i), langs)
        assert v["src_lang"] != v["tgt_lang"]
    picks = Counter(choose_teacher(0, f"x-{i}", {"gpt-4": 0.75, "gpt-3.5": 0.25}) for i in range(4000))
    assert 0.72 < picks["gpt-4"] / 4000 < 0.78
    assert choose_teacher(0, "x-1", {"a": 1, "b": 1}) == choose_teacher(0, "x-1", {"a": 1, "b": 1})


def test_split_counts_sum_exactly_and_reproduce_the_papers_group_counts():
    mix = {"short_long": 167, "long_short": 122, "sts": 99, "bitext": 89, "long_long": 17, "short_short": 13}
    counts = split_counts(507_000, mix)  # the paper's per-group counts (they sum to 507k, "500k")
    assert sum(counts.values()) == 507_000 and counts["short_long"] == 167_000 and counts["short_short"] == 13_000
    assert sum(split_counts(500_000, mix).values()) == 500_000
    small = split_counts(7, {g: 1 for g in SYNTHETIC_GROUPS})
    assert sum(small.values()) == 7 and max(small.values()) - min(small.values()) == 1
    assert brainstorm_calls_needed(45, 20, 1) == 3 and brainstorm_calls_needed(0, 20, 1) == 0


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
