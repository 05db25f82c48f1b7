"""One point of a study in its own process (what `mimreg study` starts for each point):

    python -m mimreg.study.worker STUDY.yaml STUDY_DIR POINT --cores 0,1 --device cpu [--set KEY=VALUE ...]

Pins itself to `--cores` (their count is its thread count) before torch starts its thread pool.
Exit codes: 0 done or halted, 1 failed (the error is in the ledger), 75 the point is busy elsewhere,
128+N stopped by signal N with a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimreg.study.worker")
    parser.add_argument("study_file")
    parser.add_argument("study_dir")
    parser.add_argument("point")
    parser.add_argument("--cores", help="comma-separated CPU cores to run on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="the study command's --set")
    args = parser.parse_args(argv)
    if args.cores:
        cores = [int(c) for c in args.cores.split(",")]
        os.sched_setaffinity(0, cores)
    import torch

    if args.cores:
        torch.set_num_threads(len(cores))
    print(f"point {args.point}: cores {sorted(os.sched_getaffinity(0))}, {torch.get_num_threads()} thread(s)",
          flush=True)

    from mimreg.errors import RunInterrupted
    from mimreg.study.ledger import PointBusy
    from mimreg.study.local import BUSY_EXIT
    from mimreg.study.point import run_point
    from mimreg.study.spec import load_study

    # outside training (which stops after its step with a checkpoint), SIGTERM ends the point at once,
    # through the ledger: it records the point as interrupted, not as failed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    study = load_study(args.study_file, check_points=False, extra=args.overrides)
    point = next((p for p in study.points if p.name == args.point), None)
    if point is None:
        print(f"error: study {args.study_file} has no point {args.point}", file=sys.stderr)
        return 1
    try:
        run_point(Path(args.study_dir), point, study.evaluations, device=args.device)
    except PointBusy as held:
        print(f"point {point.name} is in use by {held}", flush=True)
        return BUSY_EXIT
    except RunInterrupted as err:
        print(f"{err}", flush=True)
        return 128 + signal.Signals[err.signal_name].value
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
