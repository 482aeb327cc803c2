"""An mteb 2.x encoder (``EncoderProtocol``) with the paper's instructions and an on-disk embedding
cache, over an encoder: the evaluation's ``EncodingPool`` (Ray actors, so the driver loads no model
weights) or, for in-process use, an embedder from ``load_embedder``.

mteb hands ``encode`` a DataLoader plus the task's metadata and ``prompt_type`` (query/document).
Instructions: retrieval/reranking queries get ``Instruct: …\\nQuery: ``, their documents none;
symmetric tasks (STS, pair classification, clustering, classification) instruct both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mteb.models.abs_encoder import AbsEncoder

from embedforge.evaluate.cache import EmbeddingCache, namespace_key, text_hash
from embedforge.evaluate.spec import ModelSpec
from embedforge.instructions import ASYMMETRIC_TYPES, instruction_for


@dataclass
class EncodeStats:
    texts: int = 0          # texts mteb asked for
    cache_hits: int = 0     # served from the cache (or repeated within a call)
    encoded: int = 0        # texts the encoder computed
    calls: list = field(default_factory=list)


def task_instruction(task_name: str, task_type: str, prompt_type: str | None,
                     overrides: dict[str, str] | None = None) -> str | None:
    """The instruction for one side of a task, or None (documents of asymmetric tasks)."""
    if task_type in ASYMMETRIC_TYPES and prompt_type == "document":
        return None
    return instruction_for(task_name, task_type, overrides)


def _build_meta(name: str, max_length: int, fingerprint: str, dim: int, use_instructions: bool):
    from mteb.models.model_meta import ModelMeta

    return ModelMeta(
        loader=None, name=name if "/" in name else f"embedforge/{name}", revision=fingerprint,
        release_date=None, languages=None, n_parameters=None, memory_usage_mb=None,
        max_tokens=max_length, embed_dim=dim, license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["PyTorch"],
        similarity_fn_name="cosine", use_instructions=use_instructions, training_datasets=None,
    )


class EmbedforgeModel(AbsEncoder):
    """mteb encoder over a ``ModelSpec``; ``stats`` counts what was encoded vs. served from cache.

    ``encoder``: what computes the vectors — anything with ``encode(texts, instruction)``, ``dim`` and
    ``max_length``: the evaluation stage passes its ``EncodingPool``; None loads the spec's embedder in
    this process (tests, small local use).
    """

    def __init__(self, spec: ModelSpec, name: str = "embedforge/model", *, encoder=None, instructions: bool = True,
                 task_instructions: dict[str, str] | None = None, cache_dir: str | None = None,
                 batch_size: int = 256):
        self.spec = spec
        self.fingerprint = spec.fingerprint()  # also validates the paths, before any loading
        if encoder is None:
            from embedforge.embedders import load_embedder

            encoder = load_embedder(spec)
        self.encoder = encoder
        self.instructions = instructions
        self.task_instructions = dict(task_instructions or {})
        self.cache_dir = cache_dir
        self.batch_size = max(1, batch_size)
        self.stats = EncodeStats()
        self.mteb_model_meta = _build_meta(name, self.encoder.max_length, self.fingerprint, self.encoder.dim,
                                           instructions)
        self._caches: dict[str | None, EmbeddingCache] = {}

    # -- protocol -------------------------------------------------------------------------------
    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            texts.extend(str(t) for t in batch["text"])
        side = getattr(prompt_type, "value", prompt_type)
        instruction = (task_instruction(task_metadata.name, task_metadata.type, side, self.task_instructions)
                       if self.instructions else None)
        return self.encode_texts(texts, instruction)

    # -- the work -------------------------------------------------------------------------------
    def cache_for(self, instruction: str | None) -> EmbeddingCache:
        if instruction not in self._caches:
            self._caches[instruction] = EmbeddingCache(self.cache_dir or None,
                                                       namespace_key(self.fingerprint, instruction))
        return self._caches[instruction]

    def encode_texts(self, texts: list[str], instruction: str | None = None) -> np.ndarray:
        """Embeddings in input order: cached ones reused, unique missing texts encoded once."""
        cache = self.cache_for(instruction)
        keys = [text_hash(t) for t in texts]
        found = cache.get_many(keys)
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in found and k not in todo:
                todo[k] = t
        todo_keys, todo_texts = list(todo), list(todo.values())
        self.stats.texts += len(texts)
        self.stats.cache_hits += len(texts) - len(todo_texts)
        if todo_texts:
            if getattr(self.encoder, "streams_batches", False):
                # The pool hands back batches as they finish: each lands in the cache at once, so a
                # killed run keeps every finished batch.
                def store(ids, vecs):
                    cache.put_many([todo_keys[i] for i in ids], vecs)

                self.encoder.encode(todo_texts, instruction, on_batch=store)
            else:
                for i in range(0, len(todo_texts), self.batch_size):
                    vecs = self.encoder.encode(todo_texts[i:i + self.batch_size], instruction, show_progress=False)
                    cache.put_many(todo_keys[i:i + self.batch_size], vecs)
            self.stats.encoded += len(todo_texts)
            self.stats.calls.append({"n": len(todo_texts), "instruction": instruction})
        found = cache.get_many(keys)
        if len(texts) == 0:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
