"""The config root: every section assembled, read from YAML, then ``a.b=c`` overrides, checked as a whole.

Unknown keys and bad values fail at load with the dotted key and the allowed values, before any
model, Ray cluster or teacher is touched. The package's layout keeps one direction of imports:

- ``base``: ``Section`` (the pydantic base) and ``ConfigError``;
- ``shared``: the ``run`` and ``model`` sections and the model aliases, which several stages read;
- ``generate``, ``train``, ``evaluate``, ``serve``, ``pipeline``: one module per stage's section;
- this module: ``EmbedforgeConfig`` (the root) with the rules that span sections, and ``load_config``.

Stage code imports the submodules it needs; nothing below this module imports it back (a unit test
checks), so there is no cycle to dodge. A runner receives the root object and reads its sections.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from embedforge.config.base import ConfigError, Section
from embedforge.config.evaluate import EvaluateConfig
from embedforge.config.generate import GenerateConfig
from embedforge.config.pipeline import PipelineConfig
from embedforge.config.serve import ServeConfig
from embedforge.config.shared import MODEL_ALIASES, ModelConfig, RunConfig
from embedforge.config.train import TrainConfig

__all__ = ["ConfigError", "Section", "EmbedforgeConfig", "ModelConfig", "RunConfig", "MODEL_ALIASES",
           "load_config", "config_from_args", "format_validation_error", "with_values"]


class EmbedforgeConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _sections_agree(self) -> EmbedforgeConfig:
        """Rules that span sections, in one place (each names both keys and what would fix it)."""
        limit = self.model.max_length
        # Training tokenizes at model.max_length unless a shorter length is asked for: the trained model
        # is evaluated, exported (max_seq_length) and served at model.max_length, never beyond it.
        for key in ("query_max_length", "passage_max_length"):
            value = getattr(self.train, key)
            if value is not None and value > limit:
                raise ValueError(f"train.{key} ({value}) must be <= model.max_length ({limit}): the model is "
                                 f"evaluated and served at model.max_length; lower train.{key} or raise "
                                 "model.max_length")
        # Any single input must fit in one serving batch.
        if self.serve.max_batch_tokens < limit:
            raise ValueError(f"serve.max_batch_tokens ({self.serve.max_batch_tokens}) must be >= model.max_length "
                             f"({limit}) so that any single input fits in a batch")
        return self

    def training_lengths(self) -> tuple[int, int]:
        """(query, passage) token limits training tokenizes at: the train section's, else model.max_length.

        Resolved here, not stored: a copy with another model.max_length must not keep a stale value."""
        limit = self.model.max_length
        return self.train.query_max_length or limit, self.train.passage_max_length or limit

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def with_values(cfg: EmbedforgeConfig, **values: Any) -> EmbedforgeConfig:
    """A copy of ``cfg`` with dotted keys replaced (``**{"model.adapter": None}``), validated like a load."""
    data = cfg.model_dump(mode="json")
    for key, value in values.items():
        set_dotted(data, key.split("."), value, key)
    return validated(data)


def validated(data: dict, source: str = "") -> EmbedforgeConfig:
    """The root config from plain data; a ``ConfigError`` naming every bad key (and ``source``) otherwise."""
    try:
        return EmbedforgeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, EmbedforgeConfig, source)) from None


def _allowed_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section that ``loc`` (the path to an unknown key) sits in."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cls is None:
            # lists/dicts of sections: look inside the type arguments
            for arg in getattr(ann, "__args__", ()):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    cls = arg
            if cls is None:
                return []
    return sorted(getattr(cls, "model_fields", {}))


def format_validation_error(err: ValidationError, model_cls: type[BaseModel], source: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model_cls, tuple(p for p in loc if not isinstance(p, int)))
            lines.append(f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict) else ""
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}{got_s}" if key else msg)
    where = f" in {source}" if source else ""
    return f"invalid config{where}:\n  " + "\n  ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like a.b=c")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def set_dotted(data: dict, parts: list[str], value: Any, label: str) -> None:
    """``data[a][b]... = value`` for the key parts, making missing sections; a number indexes a list
    (``generate.labeled.3.sample_ratio``: the fourth labeled set). ``label`` names the key (or the whole
    override) in the error when a part is a value, not a section, or an index is out of range."""
    node: Any = data
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(
                    f"override {label!r}: '{'.'.join(parts[:i])}' is a list of {len(node)}; "
                    f"index it with 0..{len(node) - 1}, got {p!r}")
            if last:
                node[int(p)] = value
                return
            node = node[int(p)]
        elif isinstance(node, dict):
            if last:
                node[p] = value
                return
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        else:
            raise ConfigError(f"override {label!r}: '{parts[i - 1]}' is a value, not a section")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        set_dotted(data, parts, value, item)
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> EmbedforgeConfig:
    """Read YAML (or start from defaults), apply ``a.b=c`` overrides, validate everything."""
    data: dict = {}
    source = ""
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {source!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {source!r} must hold a mapping at the top level")
    data = apply_overrides(data, list(overrides or []))
    return validated(data, source)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_args(args: Any = None) -> EmbedforgeConfig:
    """The root config from a config object or a mapping such as a Serve config file's ``args``.

    The mapping may hold ``config`` (a YAML path), ``overrides`` (``a.b=c`` strings) and inline
    sections (``model:``, ``serve:``) merged on top, in that order.
    """
    if isinstance(args, EmbedforgeConfig):
        return args
    args = dict(args or {})
    path = args.pop("config", None)
    overrides = args.pop("overrides", None) or []
    if not isinstance(overrides, list):
        raise ConfigError("app args: 'overrides' must be a list of 'a.b=c' strings")
    base = load_config(path, overrides)
    return validated(_deep_merge(base.model_dump(mode="json"), args), "app args")
