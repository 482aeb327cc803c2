"""The paper's task taxonomy: templates (data files), seeded placeholder and language sampling, prompts.

Everything here is pure: the same (run seed, row id) always gives the same placeholders, language,
teacher and request seed, which is what makes a killed run resumable and a rerun reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources

import yaml

from embedforge.schema import CORPUS_GROUP, SYNTHETIC_GROUPS

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Template:
    group: str
    prompt: str
    keys: tuple[str, ...]
    query: str
    positive: str
    negatives: tuple[str, ...]
    long_keys: tuple[str, ...]
    task_instruction: str
    placeholders: dict[str, list] = field(default_factory=dict)
    # Output key -> the placeholder that sets its length in the prompt ("less than 10", "5 to 15 words").
    length_of: dict[str, str] = field(default_factory=dict)
    brainstorm: str | None = None
    fallback_tasks: tuple[str, ...] = ()

    @property
    def has_brainstorm(self) -> bool:
        return self.brainstorm is not None

    def json_schema(self) -> dict:
        """The JSON schema the teacher's output must follow (structured output where supported)."""
        return {
            "type": "object",
            "properties": {k: {"type": "string"} for k in self.keys},
            "required": list(self.keys),
            "additionalProperties": False,
        }


BRAINSTORM_SCHEMA = {
    "type": "object",
    "properties": {"tasks": {"type": "array", "items": {"type": "string"}}},
    "required": ["tasks"],
    "additionalProperties": False,
}


def _read(name: str) -> dict:
    return yaml.safe_load(resources.files("embedforge.generate").joinpath(f"templates/{name}.yaml").read_text())


@cache
def load_template(group: str) -> Template:
    if group not in SYNTHETIC_GROUPS:
        raise ValueError(f"unknown task group {group!r}; groups: {', '.join(SYNTHETIC_GROUPS)}")
    raw = _read(group)
    return Template(
        group=raw["group"],
        prompt=raw["prompt"],
        keys=tuple(raw["keys"]),
        query=raw["query"],
        positive=raw["positive"],
        negatives=tuple(raw.get("negatives") or ()),
        long_keys=tuple(raw.get("long_keys") or ()),
        task_instruction=raw["task_instruction"],
        placeholders={k: list(v) for k, v in (raw.get("placeholders") or {}).items()},
        length_of=dict(raw.get("length_of") or {}),
        brainstorm=raw.get("brainstorm"),
        fallback_tasks=tuple(raw.get("fallback_tasks") or ()),
    )


@lru_cache(maxsize=1)
def default_language_weights() -> dict[str, float]:
    return {str(k): float(v) for k, v in _read("languages").items()}


def language_weights(overrides: dict[str, float] | None = None) -> dict[str, float]:
    """XLM-R languages with their sampling weights; ``overrides`` replace entries (0 drops one)."""
    weights = dict(default_language_weights())
    for name, w in (overrides or {}).items():
        if name not in weights:
            raise ValueError(
                f"generate.language_weights: {name!r} is not an XLM-R language; known: {', '.join(sorted(weights))}"
            )
        weights[name] = float(w)
    weights = {k: v for k, v in weights.items() if v > 0}
    if not weights:
        raise ValueError("generate.language_weights leaves no language with a positive weight")
    return weights


def render(text: str, values: dict) -> str:
    """Fill ``{name}`` placeholders that ``values`` knows; leave other braces (JSON examples) alone."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


def unfilled(text: str, template: Template) -> set[str]:
    known = set(template.placeholders) | {"task", "language", "src_lang", "tgt_lang", "num_tasks"}
    return {name for name in _PLACEHOLDER.findall(text) if name in known}


def row_seed(run_seed: int, row_id: str) -> int:
    """A stable 31-bit seed per (run, row): Python's hash() is salted per process, so not that."""
    digest = hashlib.blake2b(f"{run_seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def word_range(option) -> tuple[int, int | None]:
    """(fewest, most) words a length placeholder asks for: "less than 10" -> (1, 9), "5 to 15 words"
    -> (5, 15), "at least 10 words" or a bare 50 ("at least {num_words} words") -> (n, None)."""
    text = str(option).lower()
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    if not numbers:
        return 1, None
    if "less than" in text or "fewer than" in text:
        return 1, max(1, numbers[0] - 1)
    if " to " in text and len(numbers) >= 2:
        return numbers[0], numbers[1]
    return numbers[0], None


def weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]


def sample_placeholders(template: Template, rng: random.Random, languages: dict[str, float]) -> dict:
    values = {name: rng.choice(options) for name, options in sorted(template.placeholders.items())}
    if template.group == "bitext":
        src = weighted_choice(rng, languages)
        others = {k: v for k, v in languages.items() if k != src} or languages
        values["src_lang"], values["tgt_lang"] = src, weighted_choice(rng, others)
        values["language"] = f"{values['src_lang']}-{values['tgt_lang']}"
    else:
        values["language"] = weighted_choice(rng, languages)
    return values


def split_counts(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` rows over groups in proportion to ``weights`` (largest remainder, exact sum)."""
    weights = {g: w for g, w in weights.items() if w > 0}
    norm = sum(weights.values())
    exact = {g: total * w / norm for g, w in weights.items()}
    counts = {g: int(math.floor(x)) for g, x in exact.items()}
    short = total - sum(counts.values())
    for g in sorted(exact, key=lambda g: (counts[g] - exact[g], g))[:short]:
        counts[g] += 1
    return counts


def brainstorm_calls_needed(rows: int, tasks_per_brainstorm: int, rows_per_task: int) -> int:
    return max(1, math.ceil(rows / (tasks_per_brainstorm * rows_per_task))) if rows > 0 else 0


def brainstorm_messages(template: Template, num_tasks: int) -> list[dict]:
    return [{"role": "user", "content": render(template.brainstorm, {"num_tasks": num_tasks})}]


def example_request(
    template: Template,
    row_id: str,
    index: int,
    tasks: list[str],
    run_seed: int,
    languages: dict[str, float],
    rows_per_task: int,
) -> dict:
    """One teacher request for example ``index`` of a group: prompt, sampled values, request seed."""
    seed = row_seed(run_seed, row_id)
    rng = random.Random(seed)
    values = sample_placeholders(template, rng, languages)
    if template.has_brainstorm:
        if not tasks:
            raise ValueError(f"group {template.group}: no task definitions to write examples for")
        values["task"] = tasks[(index // rows_per_task) % len(tasks)]
    task = render(template.task_instruction, values)
    prompt = render(template.prompt, values)
    return {
        "id": row_id,
        "group": template.group,
        "kind": "example",
        "task": task,
        "language": values["language"],
        "messages": json.dumps([{"role": "user", "content": prompt}]),
        "schema": json.dumps(template.json_schema()),
        "seed": seed,
        "values": json.dumps(values, sort_keys=True),
    }


def choose_teacher(run_seed: int, row_id: str, weights: dict[str, float]) -> str:
    """The teacher of a row, drawn by weight from the row's own seed (stable across reruns)."""
    return weighted_choice(random.Random(row_seed(run_seed, "teacher:" + row_id)), weights)


# ----------------------------------------------------------------- corpus-grounded query styles


@dataclass(frozen=True)
class CorpusStyle:
    """One query style of corpus-grounded generation (``templates/corpus_styles.yaml``): the prompt the
    teacher gets with a chunk in it, the JSON key of its answer, the row's retrieval instruction."""

    name: str
    key: str
    prompt: str
    instruction: str
    min_words: int
    max_words: int

    def json_schema(self) -> dict:
        return {"type": "object", "properties": {self.key: {"type": "string"}}, "required": [self.key],
                "additionalProperties": False}


@cache
def load_corpus_styles() -> dict[str, CorpusStyle]:
    from embedforge.config.generate import CORPUS_STYLES

    raw = _read("corpus_styles")
    assert tuple(raw) == CORPUS_STYLES, f"templates/corpus_styles.yaml styles {tuple(raw)} != {CORPUS_STYLES}"
    return {name: CorpusStyle(name=name, key=s["key"], prompt=s["prompt"], instruction=s["instruction"],
                              min_words=int(s["words"][0]), max_words=int(s["words"][1]))
            for name, s in raw.items()}


def style_sequence(weights: dict[str, float], stop: int) -> list[str]:
    """The style of each request 0..stop-1: the styles interleaved in proportion to ``weights``
    (smooth weighted round robin in the order of ``CORPUS_STYLES``), so any run of requests holds the
    mix as closely as whole requests can; the same weights always give the same sequence."""
    from embedforge.config.generate import CORPUS_STYLES

    names = [s for s in CORPUS_STYLES if weights.get(s, 0) > 0]
    if not names:
        raise ValueError("generate.corpus.styles leaves no style with a positive weight")
    total = sum(weights[s] for s in names)
    current = dict.fromkeys(names, 0.0)
    out = []
    for _ in range(stop):
        for s in names:
            current[s] += weights[s]
        pick = max(names, key=lambda s: current[s])  # the first of equals, in CORPUS_STYLES order
        current[pick] -= total
        out.append(pick)
    return out


def passage_for_prompt(text: str, max_chars: int) -> str:
    """The chunk as the prompt shows it: whole, or cut at the last space before ``max_chars``."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + " ..."


def corpus_request(style: CorpusStyle, row_id: str, chunk_id: str, chunk_text: str, run_seed: int, *,
                   language: str, instruction: str, max_chars: int, copy_ngram: int) -> dict:
    """One teacher request: write a ``style`` query for the chunk. ``values`` carries what parsing
    needs (style, chunk id and full text, the copy rule), so an answer is checked from its row alone."""
    values = {"style": style.name, "chunk_id": chunk_id, "passage": chunk_text, "copy_ngram": copy_ngram,
              "language": language}
    prompt = render(style.prompt, {"passage": passage_for_prompt(chunk_text, max_chars), "language": language,
                                   "min_words": style.min_words, "max_words": style.max_words})
    return {
        "id": row_id,
        "group": CORPUS_GROUP,
        "kind": "example",
        "task": instruction,
        "language": language,
        "messages": json.dumps([{"role": "user", "content": prompt}]),
        "schema": json.dumps(style.json_schema()),
        "seed": row_seed(run_seed, row_id),
        "values": json.dumps(values, sort_keys=True),
    }
