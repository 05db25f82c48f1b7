"""Atomic writes: the file appears whole, with the mode a plain open() gives."""

import errno
import os
import re
import stat
import tempfile

import pytest
import torch

from mimreg.errors import MimregError
from mimreg.io import atomic_write, default_file_mode, write_json_atomic


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_file_has_the_mode_of_a_plain_open(tmp_path, umask):
    before = os.umask(umask)
    try:
        atomic_write(tmp_path / "atomic.bin", lambda handle: handle.write(b"x"))
        (tmp_path / "plain.bin").write_bytes(b"x")
        assert default_file_mode() == 0o666 & ~umask and os.umask(umask) == umask  # the umask is unchanged
    finally:
        os.umask(before)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("atomic.bin", "plain.bin")}
    assert modes == {"atomic.bin": 0o666 & ~umask, "plain.bin": 0o666 & ~umask}
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_every_file_of_a_finished_run_has_one_mode(tiny_run_dir):
    files = [p for p in tiny_run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"summary.json", "metrics.jsonl", "config.yaml"} <= names and any(n.startswith("ckpt_") for n in names)
    modes = {str(p.relative_to(tiny_run_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(default_file_mode())}, modes


# ---------------------------------------------------------------- a write that fails
@pytest.fixture
def full_disk(monkeypatch):
    """Every file write fails as on a full disk (at the fsync that flushes the data)."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, full_disk):
    target = tmp_path / "out" / "x.json"
    expected = rf"^no space left on .* writing {re.escape(str(target))} .*run the command again"
    with pytest.raises(MimregError, match=expected):
        write_json_atomic(target, {"a": 1})
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_another_write_failure_names_the_file_too(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(MimregError, match=rf"^cannot write {re.escape(str(tmp_path / 'x.bin'))}: Permission denied"):
        atomic_write(tmp_path / "x.bin", lambda handle: handle.write(b"x"))


def test_summary_and_analysis_pictures_on_a_full_disk_say_which_file(tmp_path, full_disk):
    from mimreg.analysis.spectrum import plot_spectrum
    from mimreg.engine.run_folder import RunFolder

    with pytest.raises(MimregError, match=rf"no space left on .* writing {re.escape(str(tmp_path / 'summary.json'))}"):
        RunFolder(tmp_path).write_summary({"steps": 3})
    picture = tmp_path / "analysis" / "spectrum.png"
    with pytest.raises(MimregError, match=rf"no space left on .* writing {re.escape(str(picture))}"):
        plot_spectrum({"cls": torch.linspace(3, 1, 8)}, picture)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["analysis"]
