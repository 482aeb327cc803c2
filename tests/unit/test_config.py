from pathlib import Path

import pytest

from embedforge.config import EmbedforgeConfig, load_config, with_values
from embedforge.config.base import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Where the shipped configs read the data copies: their literal ../shared/data from the repository root
# (not the shared_data fixture's EMBEDFORGE_SHARED_DATA, which the configs do not follow).
CONFIG_SHARED_DATA = REPO.parent / "shared" / "data"


def test_there_are_shipped_configs():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "paper.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    # cpu-quality.yaml trains and evaluates on the local data copies; paths resolve from the repo root.
    if "../shared/data" in path.read_text() and not CONFIG_SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (the local copies of the public data sets)")
    cfg = load_config(path)
    assert isinstance(cfg, EmbedforgeConfig)
    # what the config prints loads back to the same values
    again = EmbedforgeConfig.model_validate(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, config, overrides) of every ``embedforge <stage> --config X a.b=c ...`` line in the README's and
    docs' shell blocks, continuation lines joined; a placeholder value (``<...>``) leaves its command out."""
    import re
    import shlex

    found = []
    for md in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        blocks, block, fence = [], None, None
        for line in md.read_text().splitlines():
            if block is None and line.lstrip().startswith("```"):
                fence, block = line.lstrip()[3:].strip(), []
            elif block is not None and line.strip() == "```":
                if fence in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(block))
                block = None
            elif block is not None:
                block.append(line)
        for text in blocks:
            for line in re.sub(r"\\\n\s*", " ", text).splitlines():
                m = re.search(r"embedforge (?:pipeline|generate|train|evaluate|serve) --config (\S+)(.*)",
                              line.split("  #")[0])
                if m and "<" not in m.group(2):
                    overrides = [a for a in shlex.split(m.group(2)) if "=" in a and not a.startswith("-")]
                    found.append((md.name, m.group(1), overrides))
    return found


def test_every_documented_config_command_loads(monkeypatch):
    # The commands the docs tell users to run must still load: a renamed key or a changed setting fails
    # here, naming the file and the command, instead of on a user's machine.
    if not CONFIG_SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (cpu-quality.yaml and adapt.yaml read the local data copies)")
    monkeypatch.chdir(REPO)
    commands = documented_commands()
    assert len(commands) >= 20
    assert any("generate.teachers=" in o for _, _, ov in commands for o in ov)  # the stronger-teacher recipe
    for md, config, overrides in commands:
        try:
            load_config(config, overrides)
        except ConfigError as exc:
            pytest.fail(f"{md}: embedforge ... --config {config} {' '.join(overrides)}\n{exc}")


def test_defaults_without_file():
    cfg = load_config()
    assert cfg.model.backbone == "smollm2-135m"
    assert cfg.model.pooling == "last_token"
    assert cfg.train.temperature == 0.02


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["model.max_length=128", "model.normalize=false", "run.name=abc", "train.temperature=0.05"])
    assert cfg.model.max_length == 128 and cfg.model.normalize is False
    assert cfg.run.name == "abc" and cfg.train.temperature == 0.05


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.poolng=mean"])
    msg = str(e.value)
    assert "model.poolng" in msg and "pooling" in msg and "max_length" in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["modle.pooling=mean"])
    assert "modle" in str(e.value) and "model" in str(e.value)


def test_bad_pooling_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.pooling=cls"])
    msg = str(e.value)
    assert "model.pooling" in msg
    for allowed in ("last_token", "mean", "weighted_mean"):
        assert allowed in msg


def test_missing_model_path_fails_at_load(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.backbone={tmp_path}/no-such-model"])
    assert "does not exist" in str(e.value) and "model.backbone" in str(e.value)


def test_non_positive_temperature_rejected():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.temperature=0"])
    assert "train.temperature" in str(e.value)


def test_bad_yaml_file_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_malformed_override():
    with pytest.raises(ConfigError, match="a.b=c"):
        load_config(None, ["model.pooling"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["model.pooling=mean", "model.pooling.x=1"])


def test_override_indexes_a_list_by_number(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "generate:\n  labeled:\n"
        "    - {kind: sts_pairs, name: a, path: a.tsv, task: t}\n"
        "    - {kind: classification, name: b, path: b.tsv, task: t, sample_ratio: 0.3}\n")
    cfg = load_config(cfg_file, ["generate.labeled.1.sample_ratio=0.45"])
    assert [d.sample_ratio for d in cfg.generate.labeled] == [1.0, 0.45]
    assert cfg.generate.labeled[1].name == "b"   # the rest of the entry is kept
    with pytest.raises(ConfigError, match=r"'generate.labeled' is a list of 2; index it with 0..1, got '2'"):
        load_config(cfg_file, ["generate.labeled.2.sample_ratio=0.5"])
    with pytest.raises(ConfigError, match="index it with 0..1, got 'x'"):
        load_config(cfg_file, ["generate.labeled.x=1"])


def test_training_lengths_default_to_and_never_exceed_model_max_length():
    cfg = load_config(None, ["model.max_length=96"])
    assert cfg.training_lengths() == (96, 96)
    shorter = load_config(None, ["model.max_length=96", "train.query_max_length=32"])
    assert shorter.training_lengths() == (32, 96)
    # resolved when read, so a copy with another model.max_length follows it
    assert with_values(cfg, **{"model.max_length": 128}).training_lengths() == (128, 128)
    with pytest.raises(ConfigError, match=r"train.passage_max_length \(128\) must be <= model.max_length \(96\)"):
        load_config(None, ["model.max_length=96", "train.passage_max_length=128"])


def test_a_single_input_must_fit_a_serving_batch():
    with pytest.raises(ConfigError, match=r"serve.max_batch_tokens \(100\) must be >= model.max_length \(512\)"):
        load_config(None, ["model.max_length=512", "serve.max_batch_tokens=100"])


def _imports(path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_nothing_below_the_config_root_imports_it(repo_root):
    """Stage code reads the submodules (base, shared, its own section); only the drivers that assemble a
    whole run (the CLI, the pipeline, the doctor, the Serve import path) read the root; the config
    package itself imports no stage code (only the leaves ``schema`` and ``storage``, which import no
    embedforge module)."""
    package = repo_root / "platform" / "embedforge"
    drivers = {"cli.py", "pipeline.py", "doctor.py", "deploy.py"}
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        for module, names in _imports(path):
            if rel.startswith("config/"):
                if module.startswith("embedforge") and not module.startswith(("embedforge.config.", "embedforge.schema", "embedforge.storage")):
                    offenders.append(f"{rel} imports {module}")
            elif rel not in drivers and (module == "embedforge.config" or (module == "embedforge" and "config" in names)):
                offenders.append(f"{rel} imports the config root")
    assert offenders == []


def test_worker_resources_take_custom_resources_only():
    cfg = load_config(None, ["train.resources_per_worker={trainer: 1}"])
    assert cfg.train.resources_per_worker == {"trainer": 1.0}
    with pytest.raises(ConfigError, match="train.cpus_per_worker"):
        load_config(None, ["train.resources_per_worker={CPU: 4}"])
    with pytest.raises(ConfigError, match="> 0"):
        load_config(None, ["train.resources_per_worker={trainer: 0}"])


def test_a_run_in_object_storage_is_accepted_by_uri():
    cfg = load_config(None, ["run.output_dir=s3://bucket/runs", "run.name=r", "model.backbone=s3://bucket/runs/r/train/merged"])
    assert cfg.run.storage == "s3://bucket/runs/r" and cfg.model.backbone.startswith("s3://")
