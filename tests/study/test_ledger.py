"""The ledger's shown state: "running" only while a process holds the point's lock."""

import subprocess
import sys
import time

from mimreg.study.ledger import PointLock, PointStatus, shown_state, write_status


def test_a_killed_point_shows_interrupted_and_a_live_one_running(tmp_path):
    write_status(tmp_path, "p", PointStatus(state="running"))
    assert shown_state(tmp_path, "p", PointStatus(state="running")) == "interrupted"  # no lock file at all
    with PointLock(tmp_path, "p"):
        assert shown_state(tmp_path, "p", PointStatus(state="running")) == "running"
    assert shown_state(tmp_path, "p", PointStatus(state="running")) == "interrupted"  # the lock file stays
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mimreg.study.ledger import PointLock\n"
        "lock = PointLock(sys.argv[1], 'p').__enter__(); print('held', flush=True); time.sleep(60)"),
        str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert shown_state(tmp_path, "p", PointStatus(state="running")) == "running"
        assert shown_state(tmp_path, "p", PointStatus(state="done")) == "done"
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while shown_state(tmp_path, "p", PointStatus(state="running")) != "interrupted":  # the OS drops the lock
        assert time.monotonic() < deadline
        time.sleep(0.05)
