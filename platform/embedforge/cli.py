"""The ``embedforge`` console script; ``jobs/*.py`` call the same ``main``.

Every stage subcommand takes ``--config FILE`` and any number of ``a.b=c`` overrides, validates the
whole config before doing any work, and hands it to the stage's entry function (``STAGES``), which
returns a typed result printed as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from embedforge.config.base import ConfigError

# command -> (module, entry function, help); each entry takes the root config and returns a pydantic result.
STAGES = {
    "generate": ("embedforge.generate.runner", "generate_data",
                 "Write synthetic training data with LLM teachers (Ray Data)."),
    "train": ("embedforge.train.runner", "train_model", "Contrastive LoRA fine-tuning (Ray Train + DeepSpeed ZeRO-3)."),
    "evaluate": ("embedforge.evaluate.runner", "evaluate_model", "MTEB evaluation with the paper's instructions."),
    "serve": ("embedforge.serving.runner", "serve_endpoint",
              "Run the OpenAI-compatible /v1/embeddings endpoint (Ray Serve)."),
    "pipeline": ("embedforge.pipeline", "run_pipeline", "generate -> train -> evaluate -> serve in one run directory."),
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (defaults apply when omitted)")
    p.add_argument("overrides", nargs="*", metavar="a.b=c", help="override any config key, e.g. model.max_length=128")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedforge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import-model", help="Convert a GGUF file into a safetensors HF directory (once).")
    p.add_argument("gguf", help="path to a .gguf file")
    p.add_argument("out_dir", help="directory to write (config, safetensors weights, tokenizer)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    p = sub.add_parser("embed", help="Encode texts with the configured model and print vectors / similarities.")
    _add_config_args(p)
    p.add_argument("--text", "-t", action="append", default=[], help="a text to encode (repeatable)")
    p.add_argument("--instruction", "-i", default=None, help="task instruction: texts are encoded as queries")

    p = sub.add_parser("doctor", help="Check this machine against a config: one verdict and fix per check.",
                       description="Check Python and packages, the CPU and the llama.cpp build, a local Ray instance, "
                                   "the teachers (a real completion), MiniLM, the config's data paths, disk and memory. "
                                   "Exit code 1 when something the config needs is missing.")
    p.add_argument("--config", "-c", help="YAML config file (defaults apply when omitted)")
    p.add_argument("overrides", nargs="*", metavar="a.b=c", help="override any config key")

    p = sub.add_parser("ingress-env", help="Print the exports a cluster node needs before `ray start` for the "
                                           "hardened HAProxy ingress (eval \"$(embedforge ingress-env)\").")
    p.add_argument("--admin-host", default="127.0.0.1",
                   help="where HAProxy's stats page and Prometheus endpoint listen (serve.admin_host)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="seconds a client may take to send its headers (serve.request_timeout_s)")

    for name, (_, _, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(p)
    return parser


def _load(args):
    from embedforge.config import load_config

    return load_config(args.config, args.overrides)


def _cmd_import_model(args) -> int:
    from embedforge.models import import_gguf

    out = import_gguf(args.gguf, args.out_dir, dtype=args.dtype)
    print(f"imported {args.gguf} -> {out}")
    return 0


def _cmd_embed(args) -> int:
    import numpy as np

    from embedforge.embedders import load_embedder

    cfg = _load(args)
    texts = args.text or ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    enc = load_embedder(cfg.model)
    vecs = enc.encode(texts, instruction=args.instruction)
    print(json.dumps({"model": cfg.model.backbone, "dim": enc.dim, "n": len(texts)}))
    sims = vecs @ vecs.T
    for i, t in enumerate(texts):
        print(f"[{i}] {t[:60]!r} norm={np.linalg.norm(vecs[i]):.4f} cos=" + " ".join(f"{s:+.3f}" for s in sims[i]))
    return 0


def _cmd_stage(args) -> int:
    cfg = _load(args)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    module_name, entry, _ = STAGES[args.command]
    result = getattr(importlib.import_module(module_name), entry)(cfg)
    if result is not None:
        print(result.model_dump_json(indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ingress-env":
            import shlex

            from embedforge.ray_utils import haproxy_ingress_vars

            for key, value in haproxy_ingress_vars(args.admin_host, args.header_timeout_s).items():
                print(f"export {key}={shlex.quote(value)}")
            return 0
        if args.command == "doctor":
            from embedforge.doctor import run_doctor

            return run_doctor(args.config, args.overrides)
        if args.command == "import-model":
            return _cmd_import_model(args)
        if args.command == "embed":
            if args.print_config:
                print(_load(args).to_yaml())
                return 0
            return _cmd_embed(args)
        return _cmd_stage(args)
    except ConfigError as exc:
        print(f"embedforge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
