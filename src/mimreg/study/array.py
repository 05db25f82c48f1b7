"""A study on SLURM: one job array through submitit, one element per point not yet done. Each
element resumes its point (pretraining from its last checkpoint, the evaluations not done) and is
requeued, as `mimreg submit` is, when its time limit comes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mimreg.slurm import RequeueingJob, Resources, build_executor


@dataclass
class StudyJob(RequeueingJob):
    """One array element: the point `name` of the study file `study_file`, run in `study_dir`."""

    study_file: str
    study_dir: str
    name: str
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)  # the study command's --set items

    def train(self) -> dict:
        from mimreg.engine.checkpoint import latest_checkpoint
        from mimreg.study.point import run_dir_of, run_point
        from mimreg.study.spec import load_study

        study = load_study(self.study_file, check_points=False, extra=self.overrides)
        point = next(p for p in study.points if p.name == self.name)
        outcome = run_point(Path(self.study_dir), point, study.evaluations, device=self.device)
        checkpoint = latest_checkpoint(run_dir_of(Path(self.study_dir), point) / "checkpoints")
        return {"steps": int(checkpoint.stem.split("_")[-1]) if checkpoint else 0, "halted": outcome != "done",
                "checkpoint": str(checkpoint), "point": self.name}


def submit_array(study_file: Path, study_dir: Path, names: list[str], res: Resources, *, cluster: str | None,
                 parallel: int | None, device: str = "auto", log_dir: Path | None = None,
                 overrides: list[str] = ()) -> list:
    """Submit the points `names` as one job array (at most `parallel` elements at a time); the jobs."""
    executor = build_executor(log_dir or study_dir / "submitit", res, cluster, name=f"mimreg-study-{study_dir.name}")
    if parallel and executor.cluster == "slurm":  # submitit's local executor runs every element at once
        executor.update_parameters(slurm_array_parallelism=parallel)
    jobs = [StudyJob(str(study_file.resolve()), str(study_dir.resolve()), name, device, list(overrides))
            for name in names]
    return executor.submit_array(jobs)
