"""The trained model: backbone + PEFT LoRA (``train.finetune: lora``) or the whole backbone
(``train.finetune: full``), and its outputs.

Outputs: with LoRA the adapter (gathered from ZeRO-3 partitions: outside a gather a partitioned
parameter has shape (0,), so a naive ``save_pretrained`` writes an empty adapter) and a merged Hugging
Face directory; with full fine-tuning that directory holds the trained weights themselves (their fp32
master copies, gathered from the partitions). Both: a sentence-transformers directory (the student's
pooling, normalisation when ``model.normalize``, a decoder's EOS appended by the tokenizer, an
encoder's tokenizer as it is, ``prompts`` holding the instruction template) that encodes like
``embedforge.encoder``.

The backbone is a decoder or an encoder (``embedforge.models.backbone_kind``); the training code is the
same for both: ``AutoModel`` (no head), the same pooling and loss.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import torch

from embedforge.config.train import LoraSettings, TrainConfig
from embedforge.models import DECODER, DTYPES, ENCODER, load_tokenizer
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


def unused_modules(model) -> list[str]:
    """Submodules that embedding never runs through: an encoder's ``pooler`` (BERT's tanh layer over
    [CLS], trained for next-sentence prediction; sentence-transformers pools the hidden states and
    leaves it untouched too). They get no gradient, so they are neither trained nor given LoRA."""
    pooler = getattr(model, "pooler", None)
    return ["pooler"] if isinstance(pooler, torch.nn.Module) else []


def lora_config(lora: LoraSettings, init_lora_weights: bool = True, exclude_modules: list[str] | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        exclude_modules=exclude_modules or None,
        init_lora_weights=init_lora_weights,
        bias="none",
    )


def add_lora(model, lora: LoraSettings, gradient_checkpointing: bool = False, init_lora_weights: bool = True):
    """Wrap a base model (no LM head) in LoRA; non-reentrant checkpointing survives ZeRO-3.

    An encoder's pooler (``unused_modules``) gets no adapter: it is never run for an embedding, and an
    adapter there would be trainable weights without a gradient."""
    from peft import get_peft_model

    check_target_modules(model, lora.target_modules)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    exclude = [name for skip in unused_modules(model) for name, m in model.named_modules()
               if (name == skip or name.startswith(skip + ".")) and isinstance(m, torch.nn.Linear)]
    # The adapter takes the backbone's dtype (PEFT would upcast it to fp32 on a bf16/fp16 backbone):
    # DeepSpeed keeps the fp32 master weights itself and casts a plainly built model to the training
    # precision, but leaves a zero.Init-built one as it is, so an fp32 adapter would reach the engine
    # beside bf16 weights.
    return get_peft_model(model, lora_config(lora, init_lora_weights, exclude), autocast_adapter_dtype=False)


def prepare_full_finetuning(model, gradient_checkpointing: bool = False):
    """Every weight trainable (but ``unused_modules``), in training mode: the backbone's own dropout is
    on, as in sentence-transformers' training (gradient caching replays it per chunk)."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.requires_grad_(True)
    for name in unused_modules(model):
        model.get_submodule(name).requires_grad_(False)
    return model.train()


@contextlib.contextmanager
def _zero3_loading(zero3_config: dict | None):
    """``from_pretrained`` inside builds the model under ``deepspeed.zero.Init`` (ZeRO-3), or plainly."""
    if zero3_config is None:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # transformers (and PEFT) find the config through a weak reference: this name keeps it alive
    # while the model is built and wrapped.
    hf_ds_config = HfDeepSpeedConfig(zero3_config)
    try:
        yield
    finally:
        # Unset here rather than left to the weak reference dying with this frame (a traceback can
        # keep it alive): a later from_pretrained (rank 0 alone merging the adapter at the end) would
        # otherwise run under zero.Init too and wait for ranks that never join.
        unset_hf_deepspeed_config()
        del hf_ds_config


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

    with _zero3_loading(zero3_config):
        model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype])
        return add_lora(model, lora, gradient_checkpointing)


def load_full_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False,
                    zero3_config: dict | None = None):
    """The backbone at ``path`` in ``dtype`` with every weight trainable (``train.finetune: full``),
    loaded partitioned under ZeRO-3 exactly as ``load_lora_model`` loads it."""
    from transformers import AutoModel

    with _zero3_loading(zero3_config):
        model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype])
        return prepare_full_finetuning(model, gradient_checkpointing)


def load_trainable_model(path: str, train: TrainConfig, dtype: str = "float32", zero3_config: dict | None = None):
    """What a training worker trains: ``train.finetune`` picks LoRA (``train.lora``) or every weight."""
    if train.finetune == "full":
        return load_full_model(path, dtype, train.gradient_checkpointing, zero3_config)
    return load_lora_model(path, train.lora, dtype, train.gradient_checkpointing, zero3_config)


def _full_shape(p: torch.Tensor) -> torch.Size:
    """A parameter's real shape, also when ZeRO-3 has partitioned it (its data is then empty)."""
    return getattr(p, "ds_shape", p.shape)


def optimizer_param_groups(model, weight_decay: float) -> list[dict]:
    """The trainable parameters in AdamW groups: weight decay on matrices (linear and embedding
    weights, LoRA's A and B), none on biases and normalisation weights (the usual rule, Hugging Face's
    and sentence-transformers' trainers too). LoRA (``bias="none"``) has matrices only: one group,
    as before."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if len(_full_shape(p)) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def gathered_full_state_dict(model, keep: bool = True) -> dict[str, torch.Tensor]:
    """Every weight and persistent buffer of the model as a whole fp32 CPU tensor, also under ZeRO-3
    (every rank must call this: one gather per parameter, in the same order on every rank; ``keep``
    False: take part in the gathers but keep nothing, an empty dict; rank 0 alone writes the model).

    A trained weight comes from DeepSpeed's fp32 master copy (``safe_get_full_fp32_param``: under bf16
    training the module's own copy is rounded to bf16); a frozen one (an encoder's pooler) from the
    module, gathered from its partitions."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None:
            with (deepspeed.zero.GatheredParameters([p], modifier_rank=None) if hasattr(p, "ds_id")
                  else contextlib.nullcontext()):
                full = p.detach().float().cpu().clone() if keep else None
        if keep:
            out[name] = full.detach().float().cpu().reshape(_full_shape(p)).clone()
    if not keep:
        return out
    persistent = set(model.state_dict().keys())
    for name, b in model.named_buffers():
        if name in persistent and name not in out:
            out[name] = b.detach().cpu().clone()
    return out


def save_full_model(model, state_dict: dict[str, torch.Tensor], tokenizer_dir: str, out_dir: str | Path) -> Path:
    """A plain Hugging Face directory (config, fp32 safetensors, the backbone's tokenizer) from a
    gathered state dict (``gathered_full_state_dict``): what ``from_pretrained`` and
    sentence-transformers load."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    empty = [k for k, v in state_dict.items() if v.numel() == 0]
    if not state_dict or empty:
        raise RuntimeError(f"refusing to save an empty model (empty tensors: {empty[:3]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.dtype = "float32"
    config.save_pretrained(str(out_dir))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    load_tokenizer(tokenizer_dir).save_pretrained(str(out_dir))
    return out_dir


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
    pooling: str = "last_token", normalize: bool = True, kind: str = DECODER,
) -> Path:
    """A sentence-transformers directory: Transformer -> Pooling (the model's) -> Normalize.

    ``kind`` (``embedforge.models.backbone_kind``): a decoder's tokenizer is made to append EOS, as
    the Encoder does, within ``max_length`` tokens; an encoder's tokenizer is kept as it is (its own
    ``[CLS] … [SEP]``), with ``max_seq_length = max_length - 1``: the Encoder gives it ``max_length - 1``
    tokens, [SEP] included (``embedforge.prompts.tokenize_with_eos``), and reading the directory back
    adds the 1 again (``embedforge.embedders.resolve``)."""
    if pooling not in SENTENCE_TRANSFORMERS_MODES:
        raise ValueError(f"pooling {pooling!r} has no sentence-transformers export; "
                         f"allowed: {sorted(SENTENCE_TRANSFORMERS_MODES)}")
    if kind not in (DECODER, ENCODER):
        raise ValueError(f"kind must be {DECODER!r} or {ENCODER!r}, got {kind!r}")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".hf")
    shutil.copytree(merged_dir, work, dirs_exist_ok=True)
    tok = load_tokenizer(str(work))
    if kind == DECODER:
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
    max_seq_length = max_length if kind == DECODER else max_length - 1
    try:
        transformer = Transformer(str(work), max_seq_length=max_seq_length)
        pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=SENTENCE_TRANSFORMERS_MODES[pooling])
        modules = [transformer, pool, Normalize()] if normalize else [transformer, pool]
        st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
        st.save(str(out_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # "instructions" tells a consumer whether queries take the template at all (model.instructions).
    (out_dir / "embedforge.json").write_text(json.dumps({"query_template": QUERY_TEMPLATE, "max_length": max_length,
                                                         "instructions": bool(prompts), "kind": kind}))
    return out_dir
