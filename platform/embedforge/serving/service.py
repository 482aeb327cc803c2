"""The endpoint's logic and its FastAPI app, independent of Ray.

``EmbeddingService`` turns a validated request into vectors: instruction resolution, tokenisation
with the model's length limit, token-budget chunks batched across requests by a ``ForwardQueue`` and
encoded on the one model thread (``model_thread``), dimensions and encoding.
``create_app`` wraps it in FastAPI with OpenAI's error shape, behind ``serving.guard.RequestGuard``
(the API key from the headers, then the body within its size and time limits, before the app reads it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedforge.prompts import eos_token_id, format_query, tokenize_with_eos
from embedforge.serving.batching import ForwardQueue, forward_groups, padded_tokens, split_for_budget
from embedforge.serving.guard import RequestGuard
from embedforge.serving.metrics import CountingMetrics
from embedforge.serving.protocol import (
    APIError,
    EmbeddingRequest,
    check_dimensions,
    check_request_strings,
    check_token_ids,
    embeddings_response_json,
    error_body,
    parse_input,
    truncate_dimensions,
    validation_error_to_api_error,
)

log = logging.getLogger(__name__)

HEALTH_TEXT = "embedforge health check"
# No real text averages more characters per token; serve.max_input_chars defaults to this x max_length.
MAX_CHARS_PER_TOKEN = 32


def encode_chunks(encoder, chunks: Sequence[Sequence[Sequence[int]]], batch_tokens: int,
                  overhead_tokens: int = 0) -> list[np.ndarray]:
    """One batch of chunks (from many requests) -> one array per chunk.

    The rows are length-sorted and cut into forward passes by ``forward_groups`` (padding saved vs
    ``overhead_tokens`` per extra pass), each within ``batch_tokens`` padded tokens.
    """
    flat = [seq for chunk in chunks for seq in chunk]
    vectors = np.empty((len(flat), encoder.dim), dtype=np.float32)
    for group in forward_groups([len(s) for s in flat], batch_tokens, overhead_tokens):
        vectors[group] = encoder.encode_ids([flat[i] for i in group], batch_tokens=batch_tokens, show_progress=False)
    out, start = [], 0
    for chunk in chunks:
        out.append(vectors[start:start + len(chunk)])
        start += len(chunk)
    return out


def model_thread(num_threads: int) -> ThreadPoolExecutor:
    """The one thread a server runs every forward pass on, with ``num_threads`` torch threads.

    Why one thread of its own: under OpenMP, torch's thread count belongs to the calling thread. Ray
    starts a replica with ``OMP_NUM_THREADS`` = its ``num_cpus`` (1 in the CPU configs), so
    ``torch.set_num_threads`` in the replica's ``__init__`` sets the main thread's count only; forward
    passes sent to ``asyncio.to_thread`` ran on one core while ``torch.get_num_threads()`` said 2
    (the replica at 128 % CPU of 200 % under load, MiniLM at the one-thread rate: docs/serve.md). This
    thread sets its own count when it starts, and forward passes never overlap on separate thread teams.
    """
    import torch

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedforge-model",
                              initializer=torch.set_num_threads, initargs=(num_threads,))


class EmbeddingService:
    def __init__(self, encoder, model_name: str, serve_cfg, key_digests: Sequence[str] = (),
                 metrics: CountingMetrics | None = None, instructions: bool = True):
        self.encoder = encoder
        # False for a model trained without instructions (``model.instructions: false``): a query
        # prompt it never saw would only move its vectors, so requests asking for one are refused.
        self.instructions = instructions
        self.tokenizer = encoder.tokenizer
        self.model_name = model_name
        self.cfg = serve_cfg
        self.key_digests = list(key_digests)
        self.metrics = metrics or CountingMetrics()
        self.max_length = int(encoder.max_length)
        self.vocab_size = int(getattr(encoder.model.config, "vocab_size", 0) or len(self.tokenizer))
        self.eos = eos_token_id(self.tokenizer)
        # False for an encoder (BERT family): its tokenizer's own [CLS] … [SEP], nothing appended.
        self.append_eos = bool(getattr(encoder, "append_eos", True))
        self.dim = int(encoder.dim)
        self.budget = int(serve_cfg.max_batch_tokens)
        self.created = int(time.time())
        # One forward pass's padded-token limit: the model's own, within the cross-request batch budget.
        self.forward_tokens = min(int(getattr(encoder, "batch_tokens", self.budget) or self.budget), self.budget)
        self.queue = ForwardQueue(self._encode_batch, self.budget, serve_cfg.batch_wait_timeout_s)
        import torch

        # Every forward pass (batches and health checks) runs here, one at a time, with the torch thread
        # count the creating thread set (a replica sets it before building the service).
        self.model_executor = model_thread(torch.get_num_threads())
        self.max_input_chars = serve_cfg.max_input_chars or MAX_CHARS_PER_TOKEN * self.max_length
        # The last periodic health check's failure (Ray Serve runs ``check_health``); /health reports it
        # without doing model work itself.
        self.health_error: str | None = None

    @property
    def auth_required(self) -> bool:
        return bool(self.key_digests)

    async def run_model(self, fn, *args):
        """``fn(*args)`` on the model thread, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.model_executor, functools.partial(fn, *args))

    async def _encode_batch(self, chunks: list[list[list[int]]]) -> list[np.ndarray]:
        """One batch of chunks (from many requests), on the model thread."""
        self.metrics.record_batch(sum(len(c) for c in chunks), padded_tokens(chunks))
        return await self.run_model(encode_chunks, self.encoder, chunks, self.forward_tokens,
                                    self.cfg.forward_overhead_tokens)

    # -- request -> token sequences -------------------------------------------------------------
    def resolve_instruction(self, req: EmbeddingRequest) -> str | None:
        if req.instruction is not None and req.task is not None:
            raise APIError(400, "give either 'instruction' or 'task', not both", "task", "conflicting_fields")
        if not self.instructions and (req.instruction is not None or req.task is not None):
            field = "instruction" if req.instruction is not None else "task"
            raise APIError(400, f"'{field}' is not accepted: {self.model_name!r} was trained without instructions "
                                "(model.instructions: false); send the inputs alone", field, "instructions_disabled")
        if req.task is not None:
            from embedforge.instructions import instruction_for

            try:
                return instruction_for(req.task)
            except KeyError as exc:
                raise APIError(400, str(exc.args[0]), "task", "unknown_task") from None
        return req.instruction

    def _fit(self, ids: list[int], index: int, retokenize: Callable[[], list[int]]) -> list[int]:
        """Apply the model's length limit: ``max_length - 1`` tokens, then EOS (as offline encode does)."""
        limit = self.max_length - 1
        if len(ids) > limit:
            if not self.cfg.truncate:
                raise APIError(400, f"'input[{index}]' is {len(ids)} tokens long; this model accepts at most "
                                    f"{limit} tokens per input (max_length {self.max_length}, the end-of-sequence "
                                    "token included)", "input", "context_length_exceeded")
            return retokenize()
        if self.append_eos and (not ids or ids[-1] != self.eos):
            ids = ids + [self.eos]
        return ids

    def _bound_chars(self, text: str, index: int) -> str:
        """The character limit, checked before the tokenizer sees the text (its work grows with length)."""
        if len(text) <= self.max_input_chars:
            return text
        if not self.cfg.truncate:
            raise APIError(400, f"'input[{index}]' is {len(text)} characters long; this model accepts at most "
                                f"{self.max_length - 1} tokens per input, and texts over {self.max_input_chars} "
                                "characters are refused before tokenising (serve.max_input_chars)",
                           "input", "context_length_exceeded")
        return text[: self.max_input_chars]  # still longer than max_length tokens: truncation cuts the rest

    def sequences_for(self, req: EmbeddingRequest) -> list[list[int]]:
        parsed = parse_input(req.input, self.cfg.max_inputs)
        instruction = self.resolve_instruction(req)
        if parsed.token_arrays is not None:
            if instruction:
                raise APIError(400, "an instruction or task applies to text inputs only; send text, or tokenize "
                                    "'Instruct: ...\\nQuery: ...' yourself", "instruction", "instruction_with_tokens")
            limit = self.max_length - 1
            # Lengths first (cheap, and they bound the id check's work), then the ids that remain.
            fitted = [self._fit(ids, i, lambda ids=ids: ids[:limit] + ([] if ids[limit - 1] == self.eos else [self.eos]))
                      for i, ids in enumerate(parsed.token_arrays)]
            check_token_ids(fitted, self.vocab_size)
            return fitted
        texts = [self._bound_chars(format_query(t, instruction), i) for i, t in enumerate(parsed.texts)]
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, padding=False,
                                 return_attention_mask=False)["input_ids"]
        return [
            self._fit(list(ids), i, lambda t=t: tokenize_with_eos(self.tokenizer, [t], self.max_length,
                                                                 append_eos=self.append_eos)[0])
            for i, (t, ids) in enumerate(zip(texts, encoded, strict=True))
        ]

    # -- the endpoint ------------------------------------------------------------------------------
    async def embed(self, req: EmbeddingRequest) -> bytes:
        """The JSON body of the response to one valid request (raises ``APIError`` otherwise)."""
        check_request_strings(req)
        if req.model != self.model_name:
            raise APIError(404, f"model {req.model!r} is not served here; this endpoint serves {self.model_name!r}",
                           "model", "model_not_found")
        check_dimensions(req.dimensions, self.dim)
        # Tokenising runs in a thread: a long request must not hold the event loop other requests need.
        sequences = await asyncio.to_thread(self.sequences_for, req)
        vectors = await self.encode(sequences)
        vectors = truncate_dimensions(vectors, req.dimensions)
        tokens = sum(len(s) for s in sequences)
        self.metrics.record_request(200, len(sequences), tokens)
        return embeddings_response_json(vectors, req.encoding_format, self.model_name, tokens)

    async def encode(self, sequences: list[list[int]]) -> np.ndarray:
        groups = split_for_budget(sequences, self.budget)
        results = await asyncio.gather(*(self.queue.encode([sequences[i] for i in g]) for g in groups))
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        for g, vecs in zip(groups, results, strict=True):
            out[g] = vecs
        return out

    def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "embedforge"}]}

    async def check_health(self, timeout_s: float = 30.0) -> None:
        """A real tiny encode (bypassing the batch queue); raises when the model cannot embed. Ray Serve
        calls it every ``serve.health_check_period_s``; its outcome is what ``/health`` reports."""
        try:
            vec = await asyncio.wait_for(self.run_model(self.encoder.encode, [HEALTH_TEXT], None, None, False), timeout_s)
            if vec.shape != (1, self.dim) or not np.all(np.isfinite(vec)):
                raise RuntimeError(f"health encode returned shape {vec.shape} with non-finite values")
            if self.encoder.normalize and not math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-3):
                raise RuntimeError("health encode returned a vector that is not unit length")
        except Exception as exc:
            self.health_error = str(exc) or type(exc).__name__
            raise
        self.health_error = None


def _error_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(service: EmbeddingService) -> FastAPI:
    app = FastAPI(title="embedforge embeddings", version="1",
                  description="OpenAI-compatible text embeddings (POST /v1/embeddings). Every route but "
                              "/health needs 'Authorization: Bearer <key>' when the server has keys.")
    app.add_middleware(RequestGuard, service=service)

    def record(request: Request, status: int) -> None:
        if request.url.path.endswith("/v1/embeddings"):
            service.metrics.record_request(status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        record(request, exc.status)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error_response(exc.status, exc.body(), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        err = validation_error_to_api_error(list(exc.errors()))
        record(request, err.status)
        return _error_response(err.status, err.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        record(request, exc.status_code)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(exc.status_code, error_body(str(exc.detail), kind, None, code))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("embedding request failed")
        record(request, 500)
        return _error_response(500, error_body("internal server error; see the replica's log", "server_error",
                                               None, "internal_error"))

    @app.post("/v1/embeddings")
    async def create_embeddings(req: EmbeddingRequest):
        return Response(await service.embed(req), media_type="application/json")

    @app.get("/v1/models")
    async def list_models():
        return service.models()

    @app.get("/health")
    async def health():
        """For orchestrators and load balancers: no key, no model work (the last periodic check's outcome)."""
        if service.health_error is not None:
            return _error_response(503, error_body(f"unhealthy: {service.health_error}", "server_error", None,
                                                   "unhealthy"))
        return {"status": "ok", "model": service.model_name}

    @app.get("/v1/ready")
    async def ready():
        """Readiness with a real encode, for the endpoint's owners (behind the key like every /v1 route)."""
        try:
            await service.check_health()
        except Exception as exc:  # any failure of the model means not ready, never a crash
            log.warning("readiness check failed: %s", exc)
            return _error_response(503, error_body(f"not ready: {exc}", "server_error", None, "unhealthy"))
        return {"status": "ok", "model": service.model_name}

    return app
