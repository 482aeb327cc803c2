"""False-negative masking with a frozen guide model (GISTEmbed, Solatorio 2024): ``train.guide_model``.

In-batch negatives are other queries' positives, and with a large same-task batch some of them (and
some hard negatives) answer the query as well as its own positive does: scored as negatives they push
the model away from right answers. Each step, a frozen guide embedder scores every query against every
candidate of the *global* batch; a candidate the guide scores above the query's positive (less an
absolute margin, or below a relative one: ``loss.false_negative_mask``) is dropped from that query's
softmax. The positive itself is never dropped.

Per step, on every worker: the student's token ids of the worker's rows (queries with their
instruction, positives, negatives: what the student embeds) are decoded back to text with the
student's tokenizer and re-tokenized with the guide's (sentence-transformers' ``GISTEmbedLoss`` does
the same when the tokenizers differ), embedded by the guide without gradient, and gathered from every
worker in rank order (``collectives.gather_rows``, like the student's gather in ``gradcache``). Every
worker then builds the same global mask; the loss applies the rows of its own queries. The guide is
loaded once per worker by ``embedders.load_embedder``, the loader every stage uses.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from embedforge.embedders import EmbedderSpec
from embedforge.loss import MARGIN_STRATEGIES, false_negative_mask, similarity_logits
from embedforge.train.collectives import gather_rows
from embedforge.train.gradcache import local_sequences, split_embeddings


def guide_spec(model, guide_model: str | None) -> EmbedderSpec | None:
    """What the guide encodes with: ``train.guide_model`` (null: no guide) with the ``model`` section's
    pooling, dtype, max length and token budget, no adapter; a sentence-transformers directory's own
    settings win, as everywhere (``embedders.resolve``). Workers resolve the spec on their own node,
    so a local path is made absolute and aliases and hub ids pass as they are."""
    if guide_model is None:
        return None
    from embedforge.models import node_portable_spec

    return EmbedderSpec.of(model, backbone=node_portable_spec(guide_model), adapter=None, device="cpu")


class Guide:
    """A frozen guide embedder and the false-negative rule; ``mask(local, device)`` once per step."""

    def __init__(self, encoder, student_tokenizer, margin_strategy: str = "absolute", margin: float = 0.0):
        if margin_strategy not in MARGIN_STRATEGIES:
            raise ValueError(f"train.guide_margin_strategy must be one of {', '.join(MARGIN_STRATEGIES)}, "
                             f"got {margin_strategy!r}")
        self.encoder = encoder
        self.encoder.model.eval()
        self.encoder.model.requires_grad_(False)  # frozen: never in a graph, never in the optimizer
        self.student_tokenizer = student_tokenizer
        self.margin_strategy = margin_strategy
        self.margin = float(margin)

    @classmethod
    def load(cls, spec: EmbedderSpec, student_tokenizer, margin_strategy: str, margin: float,
             device: torch.device | str) -> Guide:
        """The guide on this worker's ``device`` (the engine's), loaded by ``load_embedder``."""
        from embedforge.embedders import load_embedder

        return cls(load_embedder(replace(spec, device=str(device))), student_tokenizer, margin_strategy, margin)

    def texts(self, local: dict) -> list[str]:
        """The worker's queries, positives and negatives as the student sees them (instruction and
        truncation included), in ``gradcache.local_sequences`` order."""
        return self.student_tokenizer.batch_decode(local_sequences(local), skip_special_tokens=True)

    @torch.no_grad()
    def embed(self, local: dict) -> torch.Tensor:
        """(rows, dim) float32 guide embeddings of the worker's sequences, on the CPU."""
        ids = self.encoder.tokenize(self.texts(local))
        return torch.from_numpy(self.encoder.encode_ids(ids, show_progress=False))

    @torch.no_grad()
    def mask(self, local: dict, device: torch.device | str) -> torch.Tensor:
        """The step's false-negative mask over the global batch: bool ``(global queries, global
        positives + global negatives)``, the columns of ``similarity_logits`` on the gathered batch,
        identical on every worker. Every worker must call it (it gathers)."""
        device = torch.device(device)
        nq, k = len(local["query_ids"]), int(local["num_negatives"])
        q, p, n = split_embeddings(self.embed(local), nq, k)
        all_q, all_p = gather_rows(q, device), gather_rows(p, device)
        all_n = gather_rows(n, device) if k > 0 else None
        scores = similarity_logits(all_q.float(), all_p.float(), None if all_n is None else all_n.float(), 1.0)
        return false_negative_mask(scores, torch.arange(all_q.shape[0], device=device), self.margin_strategy,
                                   self.margin)
