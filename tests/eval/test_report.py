import json
import os

import numpy as np
import pytest
import torch

from mimreg.errors import MimregError
from mimreg.eval.report import format_table, write_json


def test_write_json_creates_folders_and_reads_back(tmp_path):
    path = tmp_path / "runs" / "a" / "metrics.json"
    payload = {"top1": 71.25, "runs": [1.0, 2.0], "name": "mae", "n": torch.tensor(3), "s": np.float32(0.5)}
    assert write_json(path, payload) == path
    text = path.read_text()
    assert json.loads(text) == {"top1": 71.25, "runs": [1.0, 2.0], "name": "mae", "n": 3, "s": 0.5}
    assert text.startswith('{\n  "top1"')  # indent 2
    assert os.listdir(path.parent) == ["metrics.json"]  # no temp file left behind


def test_write_json_replaces_whole_file_and_keeps_old_one_on_failure(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"long": "x" * 1000})
    write_json(path, {"short": 1})
    assert json.loads(path.read_text()) == {"short": 1}
    with pytest.raises(MimregError, match="JSON"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"short": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_format_table_is_an_aligned_markdown_table():
    rows = [
        {"method": "mae", "top1": 68.04, "loss": 0.12345, "epochs": 100},
        {"method": "mae+magma", "top1": 71.26, "loss": 12345.6, "lowshot": {"mean": 40.04, "std": 0.54}},
    ]
    table = format_table(rows, ["method", "top1", "loss", "epochs", "lowshot"])
    lines = table.splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["method", "top1", "loss", "epochs", "lowshot"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["mae+magma", "71.3", "1.23e+04", "-", "40.0 ± 0.5"]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["mae", "68.0", "0.123", "100", "-"]
    assert len({len(line) for line in lines}) == 1  # padded to equal width
    assert set(lines[1]) <= set("|-: ")
    assert lines[1].split("|")[2].strip().endswith(":")  # numeric column right-aligned


def test_format_table_overrides_and_escaping():
    rows = [{"top1": 1 / 3, "note": "a|b"}]
    table = format_table(rows, ["top1", "note"], formats={"top1": ".3f"})
    assert "0.333" in table and "a\\|b" in table
    table = format_table(rows, ["top1"], formats={"top1": lambda v: f"{v:.0%}"})
    assert "33%" in table
