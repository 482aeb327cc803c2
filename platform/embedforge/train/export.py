"""The trained model's exports, made after training in a Ray task of their own.

With LoRA the workers write only the adapter (gathered from ZeRO-3 partitions; small). Merging it into
the backbone and writing the sentence-transformers directory load the whole backbone in fp32: done on
rank 0 inside the worker group, the other ranks waited at a barrier for as long as that took (at 7B it
could outlast the process group's timeout) and every worker's resources stayed held. Here the group is
gone first; the task asks for the training workers' accelerator, so on a GPU cluster it lands on a GPU
node (the host memory a 7B merge needs), never on a CPU head.

With full fine-tuning (``train.finetune: full``) there is nothing to merge: the workers wrote the
trained weights to ``merged/`` and this task writes the sentence-transformers directory from them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel


class ExportPlan(BaseModel):
    backbone: str  # the model.backbone spec, resolved on the node the task runs on
    out_dir: str  # the train stage's folder in the run's storage: adapter/ in, merged/ and sentence_transformers/ out
    max_length: int  # the sentence-transformers model's max_seq_length (model.max_length)
    prompts: dict[str, str]  # task name -> instruction, the exported model's prompts ({}: none)
    pooling: str
    normalize: bool
    kind: Literal["decoder", "encoder"] = "decoder"  # embedforge.models.backbone_kind of the student
    finetune: Literal["lora", "full"] = "lora"  # train.finetune: "full" has merged/ from the workers, no adapter


class ExportResult(BaseModel):
    merged: str
    sentence_transformers: str
    host: str  # where the export ran (a GPU node on a GPU cluster)
    pid: int
    node_id: str = ""  # the Ray node it ran on


def export_trained_model(plan: ExportPlan) -> ExportResult:
    """adapter/ -> merged/ (a plain Hugging Face directory) -> sentence_transformers/ (full
    fine-tuning: merged/, written by the workers -> sentence_transformers/). Pure file work, in this
    node's working copy of the run, published to the run's storage (the same folder when the storage is
    local or a shared mount); the result names the storage paths."""
    from embedforge import storage
    from embedforge.embedders import EmbedderSpec, resolve
    from embedforge.train.model import save_merged, save_sentence_transformers

    work_dir = storage.working_dir(plan.out_dir)
    published = {name: storage.join(plan.out_dir, name) for name in ("merged", "sentence_transformers")}
    if plan.finetune == "full":
        merged = Path(storage.local_copy(published["merged"]))
    else:
        adapter = storage.local_copy(storage.join(plan.out_dir, "adapter"))
        # The backbone's transformer folder (a sentence-transformers directory's may be a subfolder).
        backbone = resolve(EmbedderSpec(backbone=plan.backbone)).weights
        merged = save_merged(backbone, Path(adapter), work_dir / "merged")
        storage.upload(merged, published["merged"])
    st = save_sentence_transformers(merged, work_dir / "sentence_transformers", plan.max_length, plan.prompts,
                                    pooling=plan.pooling, normalize=plan.normalize, kind=plan.kind)
    storage.upload(st, published["sentence_transformers"])
    return ExportResult(merged=published["merged"], sentence_transformers=published["sentence_transformers"],
                        host=socket.gethostname(), pid=os.getpid(), node_id=_ray_node_id())


def _ray_node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # outside Ray (tests call the export directly)
        return ""


def run_export_task(plan: ExportPlan, num_cpus: float, use_gpu: bool,
                    resources: dict[str, float] | None = None) -> ExportResult:
    """``export_trained_model`` as a Ray task with the training workers' resources (one worker's,
    custom resources included: it lands where a training worker could)."""
    import ray

    task = ray.remote(export_trained_model).options(num_cpus=num_cpus, num_gpus=1 if use_gpu else 0,
                                                   resources=resources or None,
                                                   name="embedforge-export", max_retries=1)
    return ray.get(task.remote(plan))
