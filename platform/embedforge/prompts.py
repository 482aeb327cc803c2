"""Prompt formatting and tokenisation exactly as the paper does it.

Queries carry a one-sentence task instruction, documents carry none, and every sequence ends in the
tokenizer's EOS token, whose final hidden state is the embedding (last-token pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"


def format_query(query: str, instruction: str | None = None) -> str:
    """``Instruct: {task}\\nQuery: {q}``; with no (or an empty) instruction the text is left as it is."""
    if instruction is None or not instruction.strip():
        return query
    return QUERY_TEMPLATE.format(instruction=instruction.strip(), query=query)


def format_document(document: str) -> str:
    """Documents get no instruction, so a corpus is encoded once for every task."""
    return document


def eos_token_id(tokenizer) -> int:
    """The end-of-sequence id; BERT-style tokenizers end sequences in [SEP] and have no EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(tokenizer, "sep_token_id", None)
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token; last-token pooling needs one "
            "(set tokenizer.eos_token)"
        )
    return int(eos)


def tokenize_with_eos(tokenizer, texts: Sequence[str], max_length: int, append_eos: bool = True) -> list[list[int]]:
    """Token ids for each text, truncated to ``max_length - 1`` and then always ended by EOS.

    Llama/Mistral tokenizers add BOS but not EOS, and transformers 5 stopped honouring
    ``add_eos_token`` for several of them, so EOS is appended here rather than trusted to the
    tokenizer. A tokenizer that already ends a sequence in EOS is not given a second one.

    ``append_eos=False`` (an encoder backbone, ``embedforge.models.backbone_kind``): the tokenizer's own
    special tokens (BERT: ``[CLS] … [SEP]``) within the same ``max_length - 1`` tokens, nothing appended.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one token of text plus EOS), got {max_length}")
    texts = list(texts)
    if not texts:
        return []
    eos = eos_token_id(tokenizer) if append_eos else None
    encoded = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length - 1,
        padding=False,
        return_attention_mask=False,
    )["input_ids"]
    if not append_eos:
        return [list(ids) for ids in encoded]
    out = []
    for ids in encoded:
        ids = list(ids)
        if not ids or ids[-1] != eos:
            ids.append(eos)
        out.append(ids)
    return out


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_token_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into ``(input_ids, attention_mask)`` long tensors on the given side."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if side == "right":
            ids[row, :n] = torch.tensor(seq, dtype=torch.long)
            mask[row, :n] = 1
        else:
            ids[row, width - n :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - n :] = 1
    return ids, mask


def pad_token_id(tokenizer) -> int:
    """The pad id; decoder tokenizers often have none, and EOS is safe because the mask hides it."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else eos_token_id(tokenizer)
