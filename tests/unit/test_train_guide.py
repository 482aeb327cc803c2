"""False-negative masking with a frozen guide model (train.guide_model, train/guide.py): the guide sees
the texts the student trains on, its mask covers the global batch (also split over workers), and a
training step applies it in the loss."""

from __future__ import annotations

import pytest
import torch

from embedforge.config.shared import ModelConfig
from embedforge.config.train import TrainConfig
from embedforge.encoder import Encoder
from embedforge.loss import false_negative_mask, similarity_logits
from embedforge.prompts import tokenize_with_eos
from embedforge.testing import tiny_model
from embedforge.train import guide as guide_module
from embedforge.train.batching import worker_slice
from embedforge.train.gradcache import contrastive_backward, split_embeddings
from embedforge.train.guide import Guide, guide_spec

QUERIES = ["what do cats like to eat?", "how do rockets reach orbit?", "why is the sky blue?", "how is bread baked?"]
POSITIVES = ["cats like to eat fish and chicken.", "rockets reach orbit by burning fuel to gain speed.",
             "the sky is blue because air scatters blue light.", "bread is baked in a hot oven after the dough rises."]
# Row 1's hard negative is query 0 itself (a false negative for query 0 by any measure); row 2's and
# row 3's are copies of positives 0 and 2 (scored exactly like them: masked only with a margin).
NEGATIVES = ["stock prices fell sharply on monday.", "what do cats like to eat?",
             "cats like to eat fish and chicken.", "the sky is blue because air scatters blue light."]


def record(tok, max_length=64):
    return {"query_ids": tokenize_with_eos(tok, QUERIES, max_length),
            "positive_ids": tokenize_with_eos(tok, POSITIVES, max_length),
            "negative_ids": tokenize_with_eos(tok, NEGATIVES, max_length), "num_negatives": 1}


@pytest.fixture(scope="module")
def minilm_guide():
    from embedforge.testing import tiny_tokenizer

    return Guide.load(guide_spec(ModelConfig(), "all-minilm-l6-v2"), tiny_tokenizer(), "absolute", 0.0, "cpu")


def test_the_guide_reads_the_texts_the_student_trains_on(minilm_guide):
    local = record(minilm_guide.student_tokenizer)
    assert minilm_guide.texts(local) == QUERIES + POSITIVES + NEGATIVES
    assert not any(p.requires_grad for p in minilm_guide.encoder.model.parameters())
    assert not minilm_guide.encoder.model.training


def test_minilm_guide_masks_false_negatives_and_never_the_positive(minilm_guide):
    local = record(minilm_guide.student_tokenizer)
    # columns: p0..p3, then the negatives n0..n3 at 4..7
    mask = minilm_guide.mask(local, "cpu")
    assert mask.shape == (4, 8) and mask.dtype == torch.bool
    assert mask.nonzero().tolist() == [[0, 5]]  # query 0 against its own text, and nothing else
    # An absolute margin of 0.05 also takes the copies of a query's positive (scored like it) for
    # false negatives; the positives themselves stay.
    with_margin = Guide(minilm_guide.encoder, minilm_guide.student_tokenizer, "absolute", 0.05).mask(local, "cpu")
    assert with_margin.nonzero().tolist() == [[0, 5], [0, 6], [2, 7]]
    relative = Guide(minilm_guide.encoder, minilm_guide.student_tokenizer, "relative", 0.05).mask(local, "cpu")
    assert relative.nonzero().tolist() == [[0, 5], [0, 6], [2, 7]]
    # what the mask is: false_negative_mask over the guide's cosine scores of the same rows
    q, p, n = split_embeddings(minilm_guide.embed(local), 4, 1)
    assert torch.equal(with_margin, false_negative_mask(similarity_logits(q, p, n, 1.0), torch.arange(4), "absolute", 0.05))


def test_the_mask_split_over_workers_is_the_single_process_mask(minilm_guide, monkeypatch):
    """Each worker embeds its own rows and gathers every worker's (a fake all_gather in rank order):
    every worker builds the single-process mask of the whole global batch."""
    whole = record(minilm_guide.student_tokenizer)
    want = minilm_guide.mask(whole, "cpu")
    world_size = 2
    slices = [worker_slice(whole, r, world_size) for r in range(world_size)]
    parts = [split_embeddings(minilm_guide.embed(s), 2, 1) for s in slices]  # (q, p, n) per worker

    def fake_gather(x, device):
        for which in range(3):
            if any(torch.equal(x, part[which]) for part in parts):
                return torch.cat([part[which] for part in parts]).to(device)
        raise AssertionError("gathered a tensor that is no worker's rows")

    monkeypatch.setattr(guide_module, "gather_rows", fake_gather)
    for s in slices:
        got = minilm_guide.mask(s, "cpu")
        assert got.shape == (4, 8)
        assert torch.equal(got, want)


def test_guide_spec_and_worker_plan_carry_the_guide():
    from embedforge.train.loop import WorkerPlan

    assert guide_spec(ModelConfig(), None) is None
    spec = guide_spec(ModelConfig(dtype="bfloat16", max_length=128), "all-minilm-l6-v2")
    assert (spec.backbone, spec.adapter, spec.dtype, spec.max_length) == ("all-minilm-l6-v2", None, "bfloat16", 128)
    plan = WorkerPlan(train=TrainConfig(guide_model="all-minilm-l6-v2"), backbone="smollm2-135m", out_dir="/tmp/x",
                      total_steps=1, pooling="last_token", guide=spec)
    again = WorkerPlan.model_validate(plan.model_dump(mode="json"))
    assert again.guide == spec
    assert WorkerPlan.model_validate(
        WorkerPlan(train=TrainConfig(), backbone="b", out_dir="o", total_steps=1, pooling="mean").model_dump(mode="json")
    ).guide is None


def test_guide_settings_fail_at_load_naming_the_key(tmp_path):
    from embedforge.config import ConfigError, load_config

    cfg = load_config(None, ["train.guide_model=all-minilm-l6-v2", "train.guide_margin_strategy=relative",
                             "train.guide_margin=0.05"])
    assert (cfg.train.guide_model, cfg.train.guide_margin_strategy, cfg.train.guide_margin) == (
        "all-minilm-l6-v2", "relative", 0.05)
    assert load_config(None).train.guide_model is None  # off by default
    with pytest.raises(ConfigError, match=r"train.guide_margin_strategy: Input should be 'absolute' or 'relative'"):
        load_config(None, ["train.guide_margin_strategy=ratio"])
    with pytest.raises(ConfigError, match=r"train.guide_margin .*must be < 1 with train.guide_margin_strategy=relative"):
        load_config(None, ["train.guide_margin_strategy=relative", "train.guide_margin=1"])
    with pytest.raises(ConfigError, match=r"train.guide_margin: Input should be greater than or equal to 0"):
        load_config(None, ["train.guide_margin=-0.1"])
    with pytest.raises(ConfigError, match=r"train.guide_model: guide model path .* does not exist"):
        load_config(None, [f"train.guide_model={tmp_path}/no-such-model"])


class FakeEngine(torch.nn.Module):
    """What ``train_step`` uses of a DeepSpeed engine, around a plain module."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.lr_scheduler = None
        self.device = torch.device("cpu")
        self.steps = 0

    def forward(self, **kwargs):
        return self.module(**kwargs)

    def set_gradient_accumulation_boundary(self, is_last):
        pass

    def backward(self, tensor, scale_wrt_gas=True):
        tensor.backward()

    def step(self):
        self.steps += 1

    def get_global_grad_norm(self):
        return 1.0


def test_train_step_builds_the_mask_once_and_the_loss_applies_it(monkeypatch, tiny_tokenizer):
    from embedforge.config.train import LoraSettings
    from embedforge.train.engine import train_step
    from embedforge.train.model import add_lora

    # A tiny random decoder as the guide (its mask is arbitrary but fixed); the student is another.
    guide = Guide(Encoder(tiny_model("llama", seed=3), tiny_tokenizer, max_length=64), tiny_tokenizer, "absolute", 0.0)
    local = record(tiny_tokenizer, max_length=24)
    mask = guide.mask(local, "cpu")
    assert 0 < mask.sum() < mask.numel()
    calls = []
    original = Guide.mask

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Guide, "mask", counted)
    train = TrainConfig(chunk_size=3, temperature=0.05, global_batch_size=4)

    def student():
        torch.manual_seed(0)
        return add_lora(tiny_model("llama"), LoraSettings(r=4, alpha=8, dropout=0.0), init_lora_weights=False).train()

    engine = FakeEngine(student())
    metrics = train_step(engine, local, 0, train, guide=guide)
    assert len(calls) == 1 and engine.steps == 1
    assert metrics["guide_masked"] == pytest.approx(mask.sum().item() / 4)
    masked = contrastive_backward(student(), local, 0, 0.05, None, mask=mask)
    plain = contrastive_backward(student(), local, 0, 0.05, None)
    assert metrics["loss"] == pytest.approx(masked.item(), rel=1e-5)
    assert abs(metrics["loss"] - plain.item()) > 1e-4
    assert "guide_masked" not in train_step(FakeEngine(student()), local, 0, train)
