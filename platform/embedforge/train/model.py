"""The trained model: backbone + PEFT LoRA, and its three outputs.

Outputs: the LoRA adapter (gathered from ZeRO-3 partitions: outside a gather a partitioned parameter
has shape (0,), so a naive ``save_pretrained`` writes an empty adapter), a merged Hugging Face
directory, and a sentence-transformers directory (the pooling of ``model.pooling``, normalisation when
``model.normalize``, EOS appended by the tokenizer, ``prompts`` holding the instruction template) that
encodes like ``embedforge.encoder``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from embedforge.config.train import LoraSettings
from embedforge.models import DTYPES, load_tokenizer
from embedforge.pooling import SENTENCE_TRANSFORMERS_MODES
from embedforge.prompts import QUERY_TEMPLATE


def linear_module_names(model) -> list[str]:
    """Last name component of every ``nn.Linear`` (what LoRA ``target_modules`` match)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_target_modules(model, target_modules) -> None:
    """Fail before training when a configured LoRA target is not a linear module of the backbone."""
    names = linear_module_names(model)
    if target_modules == "all-linear":
        if not names:
            raise ValueError("train.lora.target_modules: the backbone has no linear layers for LoRA")
        return
    missing = [t for t in target_modules if t not in names]
    if missing or not target_modules:
        raise ValueError(
            f"train.lora.target_modules: {missing or target_modules} not found in the backbone; "
            f"its linear modules are: {', '.join(names)} (or use 'all-linear')"
        )


def meta_backbone(path: str):
    """The backbone's module tree without weights (for checks before any worker starts)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def lora_config(lora: LoraSettings, init_lora_weights: bool = True):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        init_lora_weights=init_lora_weights,
        bias="none",
    )


def add_lora(model, lora: LoraSettings, gradient_checkpointing: bool = False, init_lora_weights: bool = True):
    """Wrap a base model (no LM head) in LoRA; non-reentrant checkpointing survives ZeRO-3."""
    from peft import get_peft_model

    check_target_modules(model, lora.target_modules)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    # The adapter takes the backbone's dtype (PEFT would upcast it to fp32 on a bf16/fp16 backbone):
    # DeepSpeed keeps the fp32 master weights itself and casts a plainly built model to the training
    # precision, but leaves a zero.Init-built one as it is, so an fp32 adapter would reach the engine
    # beside bf16 weights.
    return get_peft_model(model, lora_config(lora, init_lora_weights), autocast_adapter_dtype=False)


def load_lora_model(path: str, lora: LoraSettings, dtype: str = "float32", gradient_checkpointing: bool = False,
                    zero3_config: dict | None = None):
    """The backbone at ``path`` in ``dtype``, wrapped in LoRA.

    With ``zero3_config`` (the DeepSpeed ZeRO-3 config the engine will get; the process group must
    exist, and every rank calls this) ``from_pretrained`` runs under ``deepspeed.zero.Init``: each
    weight is partitioned across the ranks as it is created, rank 0 copies the checkpoint's values in
    one module at a time, and no rank ever holds the whole backbone in ``dtype``. (Rank 0 does read
    the whole checkpoint, in its stored dtype: transformers' ZeRO-3 loading does.) The LoRA weights are
    created whole; ``deepspeed.initialize`` partitions them. ``embedforge.train.ds_config.backbone_loading``
    gives a training worker both arguments.
    """
    from transformers import AutoModel

    if zero3_config is None:
        model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype])
        return add_lora(model, lora, gradient_checkpointing)
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # transformers (and PEFT) find the config through a weak reference: this name keeps it alive
    # while the model is built and wrapped.
    hf_ds_config = HfDeepSpeedConfig(zero3_config)
    try:
        model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype])
        return add_lora(model, lora, gradient_checkpointing)
    finally:
        # Unset here rather than left to the weak reference dying with this frame (a traceback can
        # keep it alive): a later from_pretrained (rank 0 alone merging the adapter at the end) would
        # otherwise run under zero.Init too and wait for ranks that never join.
        unset_hf_deepspeed_config()
        del hf_ds_config


def gathered_lora_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's weights as full CPU tensors, also under ZeRO-3 (every rank must call this)."""
    from peft import get_peft_model_state_dict

    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    partitioned = any(hasattr(p, "ds_id") for p in params)
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = get_peft_model_state_dict(peft_model)
            return {k: v.detach().float().cpu().clone() for k, v in state.items()}
    state = get_peft_model_state_dict(peft_model)
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def save_adapter(peft_model, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    empty = [k for k, v in state_dict.items() if v.numel() == 0]
    if not state_dict or empty:
        raise RuntimeError(f"refusing to save an empty LoRA adapter (empty tensors: {empty[:3]})")
    peft_model.save_pretrained(str(out_dir), state_dict=state_dict)
    return out_dir


def save_merged(backbone_path: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Backbone with the adapter merged in, plus its tokenizer: a plain HF directory."""
    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(backbone_path, dtype=DTYPES[dtype])
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(str(out_dir))
    load_tokenizer(backbone_path).save_pretrained(str(out_dir))
    return out_dir


def add_eos_post_processor(tokenizer) -> None:
    """Make a fast tokenizer end every sequence in EOS (what ``tokenize_with_eos`` does by hand).

    Truncation then keeps room for EOS, so ``max_seq_length`` truncation equals embedforge's
    ``max_length - 1`` tokens + EOS.
    """
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id
    single = f"{bos} $A {eos}" if adds_bos else f"$A {eos}"
    pair = f"{bos} $A {eos} $B {eos}" if adds_bos else f"$A {eos} $B {eos}"
    special = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if adds_bos else [])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special
    )


def query_prompts(instructions: dict[str, str]) -> dict[str, str]:
    """sentence-transformers prompts (a prefix per task) from the instruction template, keyed the way
    mteb looks them up: ``"<task>-query"`` for retrieval and reranking tasks (their documents take no
    instruction, and mteb would apply a bare ``"<task>"`` key to documents too), ``"<task>"`` for
    symmetric tasks (STS, classification, clustering, pair classification: both sides instructed).

    A model trained with ``model.instructions: false`` is exported with ``{}`` (no prompts): its
    queries are encoded exactly like documents.
    """
    from embedforge.instructions import ASYMMETRIC_TYPES, aggregate_of, task_type_of

    prefix = QUERY_TEMPLATE.split("{query}")[0]
    out = {}
    for name, text in instructions.items():
        if not text.strip():
            continue
        asymmetric = task_type_of(aggregate_of(name) or name) in ASYMMETRIC_TYPES
        out[f"{name}-query" if asymmetric else name] = prefix.format(instruction=text.strip())
    return out


# embedforge pooling name -> sentence-transformers pooling_mode (both weight positions 1..n for weighted_mean).
def save_sentence_transformers(
    merged_dir: str | Path, out_dir: str | Path, max_length: int, instructions: dict[str, str],
    pooling: str = "last_token", normalize: bool = True,
) -> Path:
    """A sentence-transformers directory: Transformer -> Pooling (the model's) -> Normalize."""
    if pooling not in SENTENCE_TRANSFORMERS_MODES:
        raise ValueError(f"pooling {pooling!r} has no sentence-transformers export; "
                         f"allowed: {sorted(SENTENCE_TRANSFORMERS_MODES)}")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".hf")
    shutil.copytree(merged_dir, work, dirs_exist_ok=True)
    tok = load_tokenizer(str(work))
    add_eos_post_processor(tok)
    tok.padding_side = "right"
    # sentence-transformers 6 wraps texts in the chat template when the tokenizer has one (an
    # instruct backbone does): embeddings are trained on raw text, so the template goes.
    tok.chat_template = None
    for name in ("chat_template.jinja", "chat_template.json"):
        (work / name).unlink(missing_ok=True)
    tok.save_pretrained(str(work))
    config_path = work / "tokenizer_config.json"
    if config_path.is_file():
        tok_config = json.loads(config_path.read_text())
        if tok_config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(tok_config, indent=2))
    prompts = query_prompts(instructions)
    try:
        transformer = Transformer(str(work), max_seq_length=max_length)
        pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=SENTENCE_TRANSFORMERS_MODES[pooling])
        modules = [transformer, pool, Normalize()] if normalize else [transformer, pool]
        st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
        st.save(str(out_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # "instructions" tells a consumer whether queries take the template at all (model.instructions).
    (out_dir / "embedforge.json").write_text(json.dumps({"query_template": QUERY_TEMPLATE, "max_length": max_length,
                                                         "instructions": bool(prompts)}))
    return out_dir
