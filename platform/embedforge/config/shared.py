"""Types every stage shares: the ``run`` and ``model`` sections and the packaged model aliases.

Stage code imports these (and ``base``) directly; only the root (``embedforge.config``) assembles the
sections into one config, so no module below it imports it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from embedforge.config.base import Section


class RunConfig(Section):
    name: str = "run"
    # Where runs live: a local path, a mount every node shares (EFS, NFS), or an object-store URI
    # (s3://bucket/runs; credentials and endpoint from the AWS_* environment). docs/cluster.md.
    output_dir: str = "runs"
    seed: int = 0
    # Before each stage: can the cluster hold its workers / actors / replicas? fail (at once, naming
    # what is missing and who holds it) | warn | off.
    resource_check: Literal["fail", "warn", "off"] = "fail"

    @property
    def storage(self) -> str:
        """The run's canonical home, ``<output_dir>/<name>``: a URI, or an absolute local path."""
        from embedforge.storage import is_uri, join

        if is_uri(self.output_dir):
            return join(self.output_dir, self.name)
        return str((Path(self.output_dir).expanduser() / self.name).resolve())

    @property
    def dir(self) -> Path:
        """This node's working copy of the run: the run itself when it is a local path (or a shared
        mount); for a URI a folder in this node's cache that stages write into and publish from."""
        from embedforge.storage import is_uri, working_dir

        if is_uri(self.output_dir):
            return working_dir(self.storage)
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
        return check_model_spec(v, "model")


def check_model_spec(v: str, what: str, also: str = "") -> str:
    """``v`` as a model spec: an alias, a URI (in the run's storage: each node fetches its own copy), a
    hub id, or an existing path — else a ValueError listing what it may be (``also``: one more choice)."""
    if v in MODEL_ALIASES:
        return v
    from embedforge.storage import is_uri

    if is_uri(v):
        return v
    if looks_like_path(v) and not os.path.exists(os.path.expanduser(v)):
        raise ValueError(
            f"{what} path {v!r} does not exist (give an existing HF model directory, a .gguf file, "
            f"a hub id like 'org/name', one of: {', '.join(MODEL_ALIASES)}{also})"
        )
    return v

    @field_validator("adapter")
    @classmethod
    def _adapter_exists(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isdir(os.path.expanduser(v)):
            raise ValueError(f"adapter directory {v!r} does not exist")
        return v
