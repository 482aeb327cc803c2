"""One typed config system: pydantic sections, read from YAML, then ``a.b=c`` overrides.

Unknown keys and bad values fail at load with the dotted key and the allowed values, before any
model, Ray cluster or teacher is touched. Each stage owns its section in ``<stage>/config.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from embedforge.evaluate.config import EvaluateConfig
from embedforge.generate.config import GenerateConfig
from embedforge.pipeline_config import PipelineConfig
from embedforge.section import ConfigError, Section
from embedforge.serving.config import ServeConfig
from embedforge.train.config import TrainConfig

__all__ = ["ConfigError", "Section", "EmbedforgeConfig", "ModelConfig", "RunConfig", "load_config"]


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    # Before each stage: can the cluster hold its workers / actors / replicas? fail (at once, naming
    # what is missing and who holds it) | warn | off.
    resource_check: Literal["fail", "warn", "off"] = "fail"

    @property
    def dir(self) -> Path:
        return Path(self.output_dir) / self.name


# Names a user may give instead of a path or hub id; resolved from installed packages.
MODEL_ALIASES = ("smollm2-135m", "all-minilm-l6-v2")


def looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~"))
        or spec.endswith(".gguf")
        or os.path.exists(os.path.expanduser(spec))
        or spec.count("/") > 1
    )


class ModelConfig(Section):
    # An alias (smollm2-135m, all-minilm-l6-v2), a local HF directory, a .gguf file, or a hub id.
    backbone: str = "smollm2-135m"
    # A PEFT LoRA adapter directory applied on top of the backbone (a training run's output).
    adapter: str | None = None
    pooling: Literal["last_token", "mean", "weighted_mean"] = "last_token"
    # The paper's task instructions on queries ("Instruct: {task}\nQuery: {q}"). One switch here,
    # not per stage, because a model must be encoded the way it was trained: training batches, hard-
    # negative mining, evaluation and the exported sentence-transformers prompts all read it. False
    # (the paper's "w/o instruction" ablation): queries are encoded exactly like documents.
    instructions: bool = True
    normalize: bool = True
    max_length: int = Field(512, ge=2, le=131072)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Token budget per forward pass of the encoder (rows x longest row in a length-sorted batch).
    batch_tokens: int = Field(16384, ge=1)
    device: str = "cpu"

    @field_validator("backbone")
    @classmethod
    def _backbone_exists(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("backbone must not be empty")
        if v in MODEL_ALIASES:
            return v
        if looks_like_path(v) and not os.path.exists(os.path.expanduser(v)):
            raise ValueError(
                f"model path {v!r} does not exist (give an existing HF model directory, a .gguf file, "
                f"a hub id like 'org/name', or one of: {', '.join(MODEL_ALIASES)})"
            )
        return v

    @field_validator("adapter")
    @classmethod
    def _adapter_exists(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isdir(os.path.expanduser(v)):
            raise ValueError(f"adapter directory {v!r} does not exist")
        return v


class EmbedforgeConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


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
            lines.append(f"{key}: {e['msg']}{got_s}")
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


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is a value, not a section")
            node = nxt
        node[parts[-1]] = value
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
    try:
        return EmbedforgeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, EmbedforgeConfig, source)) from None
