"""The endpoint's own counters (requests, inputs, tokens, batch sizes) beside Ray Serve's metrics.

``RayMetrics`` exports through ``ray.serve.metrics`` (Prometheus, the Ray dashboard); ``CountingMetrics``
keeps the same numbers in memory for tests and for runs without Ray.
"""

from __future__ import annotations

from collections import Counter


class CountingMetrics:
    def __init__(self):
        self.requests: Counter = Counter()  # by HTTP status
        self.inputs = 0
        self.tokens = 0
        # Running aggregates (a long-lived replica must not keep one entry per batch).
        self.batches = 0
        self.batch_inputs = 0
        self.max_batch_inputs = 0
        self.max_batch_padded_tokens = 0

    def record_request(self, status: int, inputs: int = 0, tokens: int = 0) -> None:
        self.requests[status] += 1
        self.inputs += inputs
        self.tokens += tokens

    def record_batch(self, inputs: int, padded_tokens: int) -> None:
        self.batches += 1
        self.batch_inputs += inputs
        self.max_batch_inputs = max(self.max_batch_inputs, inputs)
        self.max_batch_padded_tokens = max(self.max_batch_padded_tokens, padded_tokens)

    def snapshot(self) -> dict:
        return {"requests": {str(k): v for k, v in self.requests.items()}, "inputs": self.inputs,
                "tokens": self.tokens, "batches": self.batches, "batch_inputs": self.batch_inputs,
                "max_batch_inputs": self.max_batch_inputs, "max_batch_padded_tokens": self.max_batch_padded_tokens}


class RayMetrics(CountingMetrics):
    """Prometheus series ``embedforge_*`` tagged with the served model; also counts in memory."""

    def __init__(self, model_name: str):
        super().__init__()
        from ray.serve import metrics

        self._tags = {"model": model_name}
        self._requests = metrics.Counter("embedforge_requests", description="Embedding requests by HTTP status.",
                                         tag_keys=("model", "status"))
        self._inputs = metrics.Counter("embedforge_inputs", description="Inputs embedded.", tag_keys=("model",))
        self._tokens = metrics.Counter("embedforge_tokens", description="Prompt tokens embedded.",
                                       tag_keys=("model",))
        self._batch_inputs = metrics.Histogram(
            "embedforge_batch_inputs", description="Inputs per batched forward call.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], tag_keys=("model",))
        self._batch_tokens = metrics.Histogram(
            "embedforge_batch_padded_tokens", description="Padded tokens (rows x longest) per batch.",
            boundaries=[64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536], tag_keys=("model",))

    def record_request(self, status: int, inputs: int = 0, tokens: int = 0) -> None:
        super().record_request(status, inputs, tokens)
        self._requests.inc(1, tags={**self._tags, "status": str(status)})
        if inputs:
            self._inputs.inc(inputs, tags=self._tags)
        if tokens:
            self._tokens.inc(tokens, tags=self._tags)

    def record_batch(self, inputs: int, padded_tokens: int) -> None:
        super().record_batch(inputs, padded_tokens)
        self._batch_inputs.observe(inputs, tags=self._tags)
        self._batch_tokens.observe(padded_tokens, tags=self._tags)
