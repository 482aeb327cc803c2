"""The OpenAI embeddings protocol: request schema, validation, response encoding, error shape.

Pure functions and pydantic models only (no Ray, no model), so every rule is unit-tested directly.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

try:  # optional: the fast JSON encoder for responses (embeddings_response_json)
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is not installed
    _orjson = None

# OpenAI's own limit on inputs per request.
OPENAI_MAX_INPUTS = 2048


class APIError(Exception):
    """A failure reported to the client in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` exactly as OpenAI returns it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


TokenArray = list[StrictInt]
EmbeddingInput = StrictStr | list[StrictStr] | TokenArray | list[TokenArray]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` body; ``instruction`` and ``task`` are embedforge extensions."""

    model_config = ConfigDict(extra="forbid")

    input: EmbeddingInput = Field(description="A string, a list of strings, a token array, or a list of token arrays.")
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(description="Truncate to this many dimensions, then renormalise.")] | None = None
    user: StrictStr | None = None
    instruction: StrictStr | None = Field(
        None, description="Embed the inputs as queries: 'Instruct: {instruction}\\nQuery: {input}'.")
    task: StrictStr | None = Field(
        None, description="An MTEB task name whose instruction (the paper's table) applies to the inputs.")


class ParsedInput(BaseModel):
    """The input normalised to one kind: texts, or token arrays (never both)."""

    texts: list[str] | None = None
    token_arrays: list[list[int]] | None = None

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_arrays or [])


def check_encodable(value: str, field: str) -> None:
    """A string JSON can carry but UTF-8 cannot (a lone surrogate, e.g. ``"\\ud800"``) is a 400 naming
    the field and the position; the text itself is not echoed (it could not be written back)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"'{field}' holds a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X}) at "
                            f"character {exc.start}; send valid Unicode text", field.split("[")[0],
                       "invalid_text") from None


def has_text(value: str) -> bool:
    """Anything besides whitespace and NUL characters: an input without is as empty as ``""``."""
    return bool(value.replace("\x00", "").strip())


def check_request_strings(req: EmbeddingRequest) -> None:
    """Every string field of a request is valid Unicode (checked first, so no later message or
    log line has to write an unencodable string)."""
    for field in ("model", "user", "instruction", "task"):
        value = getattr(req, field)
        if isinstance(value, str):
            check_encodable(value, field)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            check_encodable(item, f"input[{i}]")


def parse_input(value, max_inputs: int) -> ParsedInput:
    """Normalise ``input`` and reject empty or too many inputs (400, naming ``input``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise APIError(400, "'input' must be a string, a list of strings, a token array or a list of token arrays",
                       "input", "invalid_type")
    if not value:
        raise APIError(400, "'input' must not be empty", "input", "empty_input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = [value]  # one token array
    if len(value) > max_inputs:
        raise APIError(400, f"'input' holds {len(value)} inputs; at most {max_inputs} are allowed per request",
                       "input", "too_many_inputs")
    if all(isinstance(v, str) for v in value):
        for i, text in enumerate(value):
            if not has_text(text):
                raise APIError(400, f"'input[{i}]' is empty or only whitespace; every input must hold text",
                               "input", "empty_input")
        return ParsedInput(texts=list(value))
    if all(isinstance(v, list) for v in value):
        for i, ids in enumerate(value):
            if not ids:
                raise APIError(400, f"'input[{i}]' is an empty token array", "input", "empty_input")
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise APIError(400, f"'input[{i}]' must be a list of integer token ids", "input", "invalid_type")
        return ParsedInput(token_arrays=[list(ids) for ids in value])
    raise APIError(400, "'input' mixes strings, token ids and token arrays; send one kind per request",
                   "input", "invalid_type")


def check_token_ids(token_arrays: list[list[int]], vocab_size: int) -> None:
    for i, ids in enumerate(token_arrays):
        for t in ids:
            if t < 0 or t >= vocab_size:
                raise APIError(400, f"'input[{i}]' holds token id {t}; this model's ids are 0..{vocab_size - 1}",
                               "input", "invalid_token_id")


def check_dimensions(dimensions: int | None, model_dim: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= model_dim:
        raise APIError(400, f"'dimensions' must be between 1 and {model_dim} for this model, got {dimensions}",
                       "dimensions", "invalid_dimensions")


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` coordinates and renormalise to unit length (Matryoshka style)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """``float``: a JSON list; ``base64``: little-endian float32 bytes, as the OpenAI client decodes them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()


def decode_base64_vector(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


def embeddings_response(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> dict:
    return _response_body(vectors, model, prompt_tokens, lambda v: encode_vector(v, encoding_format))


def _response_body(vectors: np.ndarray, model: str, prompt_tokens: int, embedding) -> dict:
    """OpenAI's response shape; ``embedding(row)`` is what each data item carries."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": embedding(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": int(prompt_tokens), "total_tokens": int(prompt_tokens)},
    }


def embeddings_response_json(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """The response body as JSON bytes: ``embeddings_response``, serialised fast.

    With orjson, float vectors are written straight from the float32 array as float32's shortest
    round-trip decimals (~9 digits; parsing them back gives the same float32 bits). The stdlib
    fallback writes each value as a Python float (17 digits, the same float32 after parsing) and
    costs ~20x more CPU per request (~1 ms for 8 x 384 floats).
    """
    if _orjson is None:
        body = embeddings_response(vectors, encoding_format, model, prompt_tokens)
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    if encoding_format == "float":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # orjson serialises C-contiguous rows only
        body = _response_body(vectors, model, prompt_tokens, lambda v: v)  # rows stay float32 arrays
    else:
        body = embeddings_response(vectors, encoding_format, model, prompt_tokens)
    return _orjson.dumps(body, option=_orjson.OPT_SERIALIZE_NUMPY)


def validation_error_to_api_error(errors: list[dict]) -> APIError:
    """FastAPI/pydantic request errors -> one 400 naming the first bad field and what it accepts."""
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", None, "invalid_json")
    field = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    if first.get("type") == "missing":
        return APIError(400, f"'{where}' is required", field, "missing_field")
    if first.get("type") == "extra_forbidden":
        allowed = ", ".join(EmbeddingRequest.model_fields)
        return APIError(400, f"unknown field '{where}'; allowed fields: {allowed}", field, "unknown_field")
    if field == "input":
        msg = "'input' must be a string, a list of strings, a token array (list of ints) or a list of token arrays"
    elif field == "encoding_format":
        msg = "'encoding_format' must be 'float' or 'base64'"
    else:
        msg = f"'{where}': {first.get('msg', 'invalid value')}"
    return APIError(400, msg, field, "invalid_type")
