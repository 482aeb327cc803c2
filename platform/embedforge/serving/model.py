"""The served model: an ``Encoder`` for a merged model, base + LoRA adapter, or a sentence-transformers dir.

A sentence-transformers directory says how it must be used (pooling, normalisation, max length) in
its own files; those settings win over the ``model`` section's, and are reported by ``served_settings``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from embedforge.encoder import Encoder

log = logging.getLogger(__name__)

# sentence-transformers pooling modes that embedforge's pooling implements.
ST_POOLING = {"mean": "mean", "lasttoken": "last_token", "weightedmean": "weighted_mean"}


@dataclass(frozen=True)
class STSettings:
    pooling: str
    normalize: bool
    max_length: int | None
    transformer_subdir: str


def read_sentence_transformers_settings(path: str) -> STSettings:
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
            if mode not in ST_POOLING:
                raise ValueError(f"sentence-transformers directory {path!r} uses pooling {mode!r}; "
                                 f"supported: {', '.join(ST_POOLING)}")
            pooling = ST_POOLING[mode]
        elif kind == "Normalize":
            normalize = True
    if pooling is None:
        raise ValueError(f"sentence-transformers directory {path!r} has no Pooling module")
    max_length = None
    st_cfg = os.path.join(path, sub, "sentence_bert_config.json")
    if not os.path.isfile(st_cfg):
        st_cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st_cfg):
        with open(st_cfg) as fh:
            max_length = json.load(fh).get("max_seq_length")
    return STSettings(pooling, normalize, max_length, sub)


def load_encoder(model_cfg) -> Encoder:
    """The ``Encoder`` the endpoint serves, from the root config's ``model`` section."""
    from embedforge.models import is_sentence_transformers_dir, load_backbone, resolve_backbone

    path = resolve_backbone(model_cfg.backbone)
    pooling, normalize, max_length = model_cfg.pooling, model_cfg.normalize, model_cfg.max_length
    spec = model_cfg.backbone
    if os.path.isdir(path) and is_sentence_transformers_dir(path):
        st = read_sentence_transformers_settings(path)
        pooling, normalize = st.pooling, st.normalize
        if st.max_length:
            # +1: Encoder counts the EOS/SEP inside max_length and ST's max_seq_length includes it too.
            max_length = min(max_length, int(st.max_length) + 1)
        spec = os.path.join(path, st.transformer_subdir) if st.transformer_subdir else path
        log.info("sentence-transformers directory %s: pooling=%s normalize=%s max_length=%s",
                 path, pooling, normalize, max_length)
    # BERT-style tokenizers have no EOS: embedforge.prompts ends their sequences in [SEP] instead.
    model, tokenizer = load_backbone(spec, model_cfg.dtype, model_cfg.adapter, model_cfg.device)
    return Encoder(model, tokenizer, pooling=pooling, normalize=normalize, max_length=max_length,
                   batch_tokens=model_cfg.batch_tokens, device=model_cfg.device)


def default_model_name(backbone: str) -> str:
    """An alias stays as it is; a path becomes its last component (``runs/x/merged`` -> ``merged``)."""
    from embedforge.config import MODEL_ALIASES

    if backbone in MODEL_ALIASES:
        return backbone
    return os.path.basename(os.path.normpath(os.path.expanduser(backbone))) or backbone
