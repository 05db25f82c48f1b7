"""Extending mimreg from the command line (the README's "Add your own regularizer", run as
written on a tiny setting) and the top-level Python API."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mimreg
from mimreg.cli import main
from mimreg.config import load_config
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS

pytestmark = pytest.mark.usefixtures("single_thread")

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["data.name=synthetic", "data.subset=64", "optim.batch_size=32", "method.decoder_dim=32",
        "method.decoder_depth=1", "method.decoder_heads=2", "train.epochs=1", "train.device=cpu",
        "train.progress=false", "train.log_every=1", "monitor=[]"]


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def code_blocks(section: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block."""
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.fixture
def readme_example(tmp_path, monkeypatch):
    """The README's files written into a fresh folder (the current folder), and its commands;
    the registered regularizer and its module are removed afterwards."""
    monkeypatch.chdir(tmp_path)
    commands = []
    for language, text in code_blocks(readme_section("Add your own regularizer")):
        first = text.splitlines()[0]
        if language in ("python", "yaml"):
            (tmp_path / first.removeprefix("# ").strip()).write_text(text)
        else:
            commands += [line.split("  #")[0] for line in text.splitlines() if line.startswith("mimreg ")]
    yield tmp_path, commands
    REGULARIZERS.pop("variance_floor", None)
    sys.modules.pop("my_regularizers", None)


def test_the_readme_example_runs_as_written(readme_example, capsys):
    folder, commands = readme_example
    assert sorted(p.name for p in folder.iterdir()) == ["my_config.yaml", "my_regularizers.py"]
    assert len(commands) == 2 and all("pretrain" in c for c in commands)
    for i, command in enumerate(commands):
        argv, out = shlex.split(command)[1:], folder / f"run{i}"
        if "--out" in argv:
            argv[argv.index("--out") + 1] = str(out)
        else:
            argv += ["--out", str(out)]
        code = main([*argv, *(x for s in TINY for x in ("--set", s))])
        assert code == 0, capsys.readouterr().err
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if r["kind"] == "train"]
        assert len(steps) == 2 and all(r["reg/variance_floor"] > 0 for r in steps)
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["imports"] == ["my_regularizers"]
        assert saved["regularizers"][0]["name"] == "variance_floor"
        # what the run stored loads again (resume, eval) in a process that imported nothing
        REGULARIZERS.pop("variance_floor")
        sys.modules.pop("my_regularizers")
        assert load_config(out / "config.yaml").regularizers[0].options.target_std > 0


def test_a_users_option_is_range_checked(readme_example):
    with pytest.raises(ConfigError, match=r"regularizers\.variance_floor\.target_std=-1\.0 is out of range"):
        load_config("mae", ["imports+=my_regularizers", "regularizers=[{name: variance_floor, target_std: -1}]"])


def test_an_unknown_name_points_to_imports_and_a_bad_import_names_the_module(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown name 'mine'.*`imports:` or --import"):
        load_config("mae", ["regularizers=[mine]"])
    with pytest.raises(ConfigError, match=r"imports: importing 'no_such_module_here' failed with ModuleNotFoundError"):
        load_config("mae", ["imports+=no_such_module_here"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"importing '.*broken\.py' failed with RuntimeError: boom"):
        load_config("mae", ["imports+=broken.py"])
    assert "broken" not in sys.modules


def test_import_mimreg_is_cheap_and_exports_the_api():
    probe = "import sys, mimreg; print(sorted(m for m in ('torch', 'mimreg.config') if m in sys.modules))"
    env = {"PYTHONPATH": str(README.parent / "src"), "PATH": ""}
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          check=True).stdout.strip() == "[]"
    for name in mimreg.__all__:
        assert getattr(mimreg, name) is not None, name
    assert mimreg.register_regularizer is __import__("mimreg.regularizers").regularizers.register
    assert {"load_config", "pretrain", "load_encoder", "evaluate", "register_method"} <= set(dir(mimreg))
    with pytest.raises(AttributeError):
        mimreg.no_such_name  # noqa: B018


@pytest.fixture
def asking_checkpoint(tiny_run, tmp_path, monkeypatch):
    """tiny_run's latest checkpoint with `imports: [marker_plugin]` in its config, and that module in
    the current folder: importing it writes imported.txt."""
    import torch

    from mimreg.engine.checkpoint import latest_checkpoint

    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "marker_plugin.py").write_text("from pathlib import Path\nPath('imported.txt').write_text('ran')\n")
    path = latest_checkpoint(tiny_run / "checkpoints")
    state = torch.load(path, weights_only=True)
    state["config"]["imports"] = ["marker_plugin"]
    torch.save(state, path)
    yield path, folder / "imported.txt"
    sys.modules.pop("marker_plugin", None)


def test_a_checkpoint_imports_its_modules_only_with_consent(asking_checkpoint, tiny_run, tmp_path, capsys):
    path, marker = asking_checkpoint
    for argv in (["eval", "erank", "--checkpoint", path], ["export", "--checkpoint", path, "--out", tmp_path / "e.pth"],
                 ["analyze", "--checkpoint", path, "--pictures", "spectrum"],
                 ["report", tiny_run, "--out", tmp_path / "r.html"]):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: checkpoint {path} asks to import ['marker_plugin'] (importing runs their code), which "
                       "mimreg does not do without your consent; pass --import MODULE for each module you trust, or "
                       "--trust-imports to import every module it names (in Python: import them before loading)")
        assert not marker.exists() and "marker_plugin" not in sys.modules
    export = ["export", "--checkpoint", str(path), "--out", str(tmp_path / "e.pth")]
    assert main([*export, "--import", "marker_plugin"]) == 0
    assert marker.read_text() == "ran" and (tmp_path / "e.pth").is_file()
    marker.unlink()
    sys.modules.pop("marker_plugin")
    assert main(["eval", "erank", "--checkpoint", str(path), "--trust-imports"]) == 0
    assert marker.read_text() == "ran" and (tiny_run / "evals" / "erank_synthetic_cls.json").is_file()


def test_a_resume_imports_only_what_the_users_config_names(asking_checkpoint, tiny_run, capsys):
    path, marker = asking_checkpoint
    config = tiny_run / "config.yaml"
    code = main(["pretrain", str(config), "--out", str(tiny_run), "--resume"])
    assert not marker.exists() and code == 2
    assert f"error: checkpoint {path} asks to import ['marker_plugin']" in capsys.readouterr().err
