"""The one way to turn a ``model`` section into something that embeds texts.

Evaluation, serving, hard-negative mining and ``embedforge embed`` all call ``load_embedder``, so a
model is encoded the same way everywhere: an HF decoder (a training run's merged model, base + LoRA
adapter, any causal LM), an HF encoder (BERT family) or a sentence-transformers directory, all through
``embedforge.encoder.Encoder``. Training resolves its student with ``resolve`` too, so a model is
trained the way it is then loaded: the backbone's kind (``embedforge.models.backbone_kind``: a
decoder's sequences end in an appended EOS, an encoder's are its tokenizer's own) and its pooling.

A sentence-transformers directory says how it must be used (pooling, normalisation, max length) in
its own files; those settings win over the ``model`` section's (``resolve`` reports what is used).
Encoding such a directory through the Encoder instead of through sentence-transformers reproduces
sentence-transformers' vectors (cosine >= 0.99999, tests/unit/test_embedders.py) and all-MiniLM-L6-v2's
published MTEB scores (tests/integration/test_evaluate.py), so there is no second backend.

No Ray here: ``embedforge.encode_pool`` runs embedders on a pool of Ray actors.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from embedforge.encoder import Encoder
from embedforge.pooling import POOLING_OF_SENTENCE_TRANSFORMERS_MODE

log = logging.getLogger(__name__)

class Embedder(Protocol):
    """Texts (+ an optional instruction that formats each as a query) to vectors."""

    # Tokens per text, the EOS/SEP included; longer texts are truncated.
    max_length: int

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], instruction: str | None = None, *,
               show_progress: bool | None = None) -> np.ndarray:
        """(len(texts), dim) float32 in input order; ``show_progress`` None: a bar for long lists."""
        ...

    def count_tokens(self, texts: Sequence[str], instruction: str | None = None) -> list[int]: ...


@dataclass(frozen=True)
class EmbedderSpec:
    """A picklable ``model`` section (a Ray actor builds its own embedder from it).

    The field names are the ``model`` section's (``embedforge.config.ModelConfig``), so any object
    with these attributes can be passed wherever a spec is, and ``of`` copies them by name.
    """

    backbone: str
    adapter: str | None = None
    pooling: str = "last_token"
    normalize: bool = True
    max_length: int = 512
    dtype: str = "float32"
    batch_tokens: int = 16384
    device: str = "cpu"

    @classmethod
    def of(cls, model, **changes):
        """The spec of a ``model`` section (or of another spec), with ``changes`` applied."""
        values = {f.name: getattr(model, f.name) for f in fields(cls) if hasattr(model, f.name)}
        return cls(**{**values, **changes})


@dataclass(frozen=True)
class SentenceTransformersSettings:
    pooling: str
    normalize: bool
    max_seq_length: int | None
    transformer_subdir: str


def read_sentence_transformers_settings(path: str) -> SentenceTransformersSettings:
    """Pooling, normalisation and max length from a sentence-transformers directory's own files."""
    with open(os.path.join(path, "modules.json")) as fh:
        modules = json.load(fh)
    pooling = None
    normalize = False
    sub = ""
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Transformer":
            sub = m.get("path", "")
        elif kind == "Pooling":
            with open(os.path.join(path, m.get("path", ""), "config.json")) as fh:
                pcfg = json.load(fh)
            mode = pcfg.get("pooling_mode")
            if mode is None:
                flags = {k[len("pooling_mode_"):].replace("_tokens", "").replace("_token", ""): v
                         for k, v in pcfg.items() if k.startswith("pooling_mode_")}
                on = [k for k, v in flags.items() if v]
                mode = on[0] if len(on) == 1 else ",".join(on)
            mode = mode.replace("_", "")
            if mode not in POOLING_OF_SENTENCE_TRANSFORMERS_MODE:
                raise ValueError(f"sentence-transformers directory {path!r} uses pooling {mode!r}; "
                                 f"supported: {', '.join(POOLING_OF_SENTENCE_TRANSFORMERS_MODE)}")
            pooling = POOLING_OF_SENTENCE_TRANSFORMERS_MODE[mode]
        elif kind == "Normalize":
            normalize = True
    if pooling is None:
        raise ValueError(f"sentence-transformers directory {path!r} has no Pooling module")
    max_seq_length = None
    st_cfg = os.path.join(path, sub, "sentence_bert_config.json")
    if not os.path.isfile(st_cfg):
        st_cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st_cfg):
        with open(st_cfg) as fh:
            max_seq_length = json.load(fh).get("max_seq_length")
    tok_cfg = os.path.join(path, sub, "tokenizer_config.json")
    if max_seq_length is None and os.path.isfile(tok_cfg):
        # sentence-transformers 6 saves the limit as the tokenizer's model_max_length instead (an
        # unset one is a huge sentinel, not a limit).
        with open(tok_cfg) as fh:
            limit = json.load(fh).get("model_max_length")
        if isinstance(limit, int) and limit < 1_000_000:
            max_seq_length = limit
    return SentenceTransformersSettings(pooling, normalize, max_seq_length, sub)


@dataclass(frozen=True)
class ResolvedModel:
    """What ``load_embedder`` will load and how: the settings that decide the vectors."""

    path: str       # the model directory (or hub id) the backbone spec names
    weights: str    # where the transformer's weights are (a sentence-transformers module subfolder)
    adapter: str | None
    pooling: str
    normalize: bool
    max_length: int
    dtype: str
    sentence_transformers: bool
    kind: str = "decoder"  # embedforge.models.backbone_kind of the transformer: "decoder" | "encoder"

    @property
    def append_eos(self) -> bool:
        """Whether sequences get an EOS appended (a decoder) or keep the tokenizer's own end (an encoder)."""
        from embedforge.models import DECODER

        return self.kind == DECODER


def resolve(model, weights: bool = True) -> ResolvedModel:
    """The model section's backbone located (GGUF imported once), with a sentence-transformers
    directory's own pooling / normalisation / max length in place of the section's. ``weights=False``:
    the settings only (a model in object storage is fetched without its weight files)."""
    from embedforge.models import backbone_kind, is_sentence_transformers_dir, resolve_backbone

    path = resolve_backbone(model.backbone, weights=weights)
    if not (os.path.isdir(path) and is_sentence_transformers_dir(path)):
        return ResolvedModel(path, path, model.adapter, model.pooling, model.normalize, model.max_length,
                             model.dtype, sentence_transformers=False, kind=backbone_kind(path))
    st = read_sentence_transformers_settings(path)
    max_length = model.max_length
    if st.max_seq_length:
        # +1: the Encoder's max_length counts one slot for the end token (a decoder's appended EOS);
        # a BERT-style tokenizer (or an exported decoder's, which appends EOS itself) already ends the
        # text in [SEP] / EOS within max_length - 1 tokens, while sentence-transformers'
        # max_seq_length counts that token among its tokens. So max_seq_length + 1 gives the same tokens.
        max_length = min(max_length, int(st.max_seq_length) + 1)
    weights_dir = os.path.join(path, st.transformer_subdir) if st.transformer_subdir else path
    return ResolvedModel(path, weights_dir, model.adapter, st.pooling, st.normalize, max_length, model.dtype,
                         sentence_transformers=True, kind=backbone_kind(weights_dir))


def load_embedder(model) -> Encoder:
    """The embedder for a ``model`` section (``ModelConfig``, an ``EmbedderSpec`` or the like)."""
    from embedforge.models import load_backbone

    r = resolve(model)
    if r.sentence_transformers:
        log.info("sentence-transformers directory %s: pooling=%s normalize=%s max_length=%s",
                 r.path, r.pooling, r.normalize, r.max_length)
    # An encoder (BERT family) keeps its tokenizer's [CLS] … [SEP]; a decoder's sequences end in EOS.
    net, tokenizer = load_backbone(r.weights, r.dtype, r.adapter, model.device)
    return Encoder(net, tokenizer, pooling=r.pooling, normalize=r.normalize, max_length=r.max_length,
                   batch_tokens=model.batch_tokens, device=model.device, append_eos=r.append_eos)
