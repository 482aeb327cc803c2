import subprocess
import sys

import pytest

from embedforge.cli import STAGES, build_parser, main


@pytest.mark.parametrize("command", ["import-model", "embed", *STAGES])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert "usage: embedforge " + command in capsys.readouterr().out


def test_bad_override_is_reported_not_raised(capsys):
    assert main(["train", "model.pooling=cls", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "model.pooling" in err and "last_token" in err


def test_print_config_shows_the_overrides_and_exits_zero(capsys):
    assert main(["train", "--print-config", "model.max_length=99"]) == 0
    assert "max_length: 99" in capsys.readouterr().out


def test_import_platform_from_repo_root_is_the_stdlib(repo_root):
    # platform/ is a source root, not a package: it must never shadow the standard library.
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"],
                         cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Linux"
    assert not (repo_root / "platform" / "__init__.py").exists()
