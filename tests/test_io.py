"""Atomic writes: the file appears whole, with the mode a plain open() gives."""

import os
import stat

import pytest

from mimreg.io import atomic_write, default_file_mode


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
