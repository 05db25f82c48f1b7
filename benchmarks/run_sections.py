"""device_check.sh's runner: each section (a benchmark script or `-m module`) with its output in
OUT/NAME.txt, its exit code and seconds in OUT/summary.json; a failing section does not stop the others.

Sections run as processes under their time limit; with --in-process (the script's --smoke mode)
they run one after the other in this interpreter instead, since on a small CPU starting torch and
timm once rather than six times is most of the smoke run's time.

    python benchmarks/run_sections.py --out DIR [--in-process] -- NAME SECONDS TARGET ARGS... :: NAME ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

SEPARATOR = "::"


def parse_sections(tokens: list[str]) -> list[tuple[str, float, list[str]]]:
    """[(name, seconds, [target, *args])]; a target is a .py script or `-m module`."""
    sections, current = [], []
    for token in [*tokens, SEPARATOR]:
        if token != SEPARATOR:
            current.append(token)
            continue
        if len(current) < 3:
            raise SystemExit(f"run_sections: a section needs NAME SECONDS TARGET, got {current}")
        sections.append((current[0], float(current[1]), current[2:]))
        current = []
    return sections


def run_in_process(command: list[str], log) -> int:
    module = command[0] == "-m"
    target, args = (command[1], command[2:]) if module else (command[0], command[1:])
    sys.argv = [target, *args]
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            if module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else int(done.code is not None)
        except Exception:  # a section's failure is its result; the next section still runs
            traceback.print_exc()
            return 1
    return 0


def run_process(command: list[str], log, seconds: float) -> int:
    try:
        return subprocess.run([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT,
                              timeout=seconds).returncode
    except subprocess.TimeoutExpired:  # the process was killed; what it printed stays in the log
        print(f"\nrun_sections: stopped after {seconds:.0f} s", file=log)
        return 124


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("sections", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"in_process": args.in_process}
    for name, seconds, command in parse_sections([t for t in args.sections if t != "--"]):
        print(f"== {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        with open(out / f"{name}.txt", "w") as log:
            code = run_in_process(command, log) if args.in_process else run_process(command, log, seconds)
        summary[name] = {"exit_code": code, "seconds": round(time.perf_counter() - start, 1)}
        tail = (out / f"{name}.txt").read_text(errors="replace").splitlines()[-4:]
        print(f"   exit {code} after {summary[name]['seconds']} s", *("   " + line for line in tail), sep="\n",
              flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [name for name, entry in summary.items() if isinstance(entry, dict) and entry["exit_code"] != 0]
    print(f"results in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
