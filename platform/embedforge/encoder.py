"""Texts (+ an optional instruction) to float32 numpy embeddings.

``embed`` is the differentiable forward the trainer also uses; ``Encoder`` adds tokenisation,
length-sorted batching under a token budget, original order restored, and a progress bar.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch

from embedforge.pooling import l2_normalize, pool, position_ids_from_mask
from embedforge.prompts import format_query, pad_batch, pad_token_id, tokenize_with_eos

PROGRESS_THRESHOLD = 512  # inputs; below this a bar is noise


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states, with positions counted from the mask.

    Positions from the mask equal the default ones under right padding and fix left padding, for
    decoders (rotary positions) and BERT-style encoders alike.
    """
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _accepts_position_ids(model):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    out = model(**kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _accepts_position_ids(model) -> bool:
    fwd = getattr(model, "forward", None)
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def embed(model, input_ids, attention_mask, pooling: str = "last_token", normalize: bool = True) -> torch.Tensor:
    h = hidden_states(model, input_ids, attention_mask)
    e = pool(h, attention_mask, pooling)
    return l2_normalize(e) if normalize else e


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest-first so that rows x longest row stays within ``batch_tokens``.

    A single row longer than the budget still forms a batch of one (truncation already bounds it).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        w = max(width, lengths[i])
        if current and w * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, w = [], lengths[i]
        current.append(i)
        width = w
    if current:
        batches.append(current)
    return batches


class Encoder:
    def __init__(
        self,
        model,
        tokenizer,
        pooling: str = "last_token",
        normalize: bool = True,
        max_length: int = 512,
        batch_tokens: int = 16384,
        device: str | torch.device = "cpu",
        padding_side: str = "right",
        append_eos: bool = True,
    ):
        """``append_eos``: end every sequence in EOS (a decoder backbone); False for an encoder, whose
        tokenizer's own special tokens (``[CLS] … [SEP]``) are kept as they are (``load_embedder``
        sets it from ``embedforge.models.backbone_kind``)."""
        from embedforge.pooling import POOLINGS

        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.device = torch.device(device)
        self.padding_side = padding_side
        self.append_eos = append_eos

    @classmethod
    def from_config(cls, model_cfg) -> Encoder:
        """Same as ``embedforge.embedders.load_embedder`` (the one loader; kept for its callers)."""
        from embedforge.embedders import load_embedder

        return load_embedder(model_cfg)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        formatted = [format_query(t, instruction) for t in texts]
        return tokenize_with_eos(self.tokenizer, formatted, self.max_length, append_eos=self.append_eos)

    def count_tokens(self, texts: Sequence[str], instruction: str | None = None) -> list[int]:
        return [len(ids) for ids in self.tokenize(texts, instruction)]

    @torch.inference_mode()
    def encode_ids(self, sequences: Sequence[Sequence[int]], batch_tokens: int | None = None,
                   show_progress: bool | None = None) -> np.ndarray:
        n = len(sequences)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        budget = batch_tokens or self.batch_tokens
        batches = token_budget_batches([len(s) for s in sequences], budget)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = n >= PROGRESS_THRESHOLD
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encoding", unit="text")
        pad = pad_token_id(self.tokenizer)
        for idx in batches:
            ids, mask = pad_batch([sequences[i] for i in idx], pad, self.padding_side)
            vecs = embed(self.model, ids.to(self.device), mask.to(self.device), self.pooling, self.normalize)
            out[idx] = vecs.float().cpu().numpy()
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def encode(self, texts: Sequence[str] | str, instruction: str | None = None,
               batch_tokens: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        """(n, dim) float32 embeddings in input order; an instruction formats every text as a query."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single string in a list")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__}")
        return self.encode_ids(self.tokenize(texts, instruction), batch_tokens, show_progress)
