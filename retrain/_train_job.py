"""A refresh's training in a process of its own, so it can share the machine with serving.

The loop runs in the process that also hosts the feedback consumer (and, under
``distillery run``, Ray's driver): training there would use that process's OpenMP runtime
and priority. Measured on 2 cores with serving load beside it (docs/benchmarks.md, loop
robustness): libgomp's default wait policy spins its idle threads, which under contention
cost more than the matrix products (15.3 s a step with 2 threads vs 10.0 s with the
passive policy; 5.6 vs 5.9 s alone). ``OMP_WAIT_POLICY`` is read once, when the runtime
loads, and it would be inherited by every process started after it (Ray workers, vLLM's
engine), so it can only be scoped to training by starting training in its own process.
The same process gets a lower scheduling priority (``DistillConfig.niceness``): serving
keeps the cores it needs, training takes what is left.

The job's inputs and outputs are files (``TrainJob``, the dataset as JSON lines, the
``TrainResult``): the child imports nothing from the parent's state. Progress comes back
on the child's stdout, one JSON object a line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from retrain._dataset import DistillDataset, Pair
from retrain.config import DistillConfig

__all__ = ["TrainJob", "TrainingFailed", "job_environment", "train_in_subprocess"]

JOB_FILE = "train_job.json"
DATASET_FILE = "train_rows.jsonl"
RESULT_FILE = "train_result.json"
PROGRESS_PREFIX = "distillery-progress "


class TrainingFailed(RuntimeError):
    """The training process exited without a model; the message ends with its last lines."""


class TrainJob(BaseModel):
    """What the training process is asked to do (written as ``train_job.json``)."""

    parent_dir: Path
    output_dir: Path
    config: DistillConfig
    teacher_dir: Path | None = None
    dataset_file: Path
    new_examples: int
    replay_examples: int
    dropped: int
    by_skill: dict[str, int]
    result_file: Path


def _pair_from_json(row: dict[str, Any]) -> Pair:
    messages = row.get("messages")
    row["messages"] = tuple(tuple(turn) for turn in messages) if messages is not None else None
    return Pair(**row)


def job_environment(config: DistillConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the parent's, with OpenMP told to sleep rather than spin
    between parallel regions and to use the trainer's thread count."""
    env = dict(os.environ if base is None else base)
    env["OMP_WAIT_POLICY"] = config.omp_wait_policy
    env["OMP_NUM_THREADS"] = str(config.num_threads)
    return env


def train_in_subprocess(
    parent_dir: Path,
    dataset: DistillDataset,
    output_dir: Path,
    config: DistillConfig,
    *,
    teacher_dir: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Runs ``retrain._train.distill`` in a child process; its ``TrainResult`` as a dict.

    The job files sit beside ``output_dir`` (``<output>.job/``) and are removed on success;
    a failed job keeps them and its log for the operator."""
    job_dir = output_dir.with_name(output_dir.name + ".job")
    job_dir.mkdir(parents=True, exist_ok=True)
    rows = job_dir / DATASET_FILE
    rows.write_text("".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in dataset.train))
    job = TrainJob(
        parent_dir=parent_dir,
        output_dir=output_dir,
        config=config.model_copy(update={"isolated": False}),
        teacher_dir=teacher_dir,
        dataset_file=rows,
        new_examples=dataset.new_examples,
        replay_examples=dataset.replay_examples,
        dropped=dataset.dropped,
        by_skill=dataset.by_skill,
        result_file=job_dir / RESULT_FILE,
    )
    (job_dir / JOB_FILE).write_text(job.model_dump_json(indent=2))
    log_path = job_dir / "train.log"
    tail: deque[str] = deque(maxlen=20)
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            [sys.executable, "-m", "retrain._train_job", str(job_dir / JOB_FILE)],
            env=job_environment(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as child,
    ):
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(PROGRESS_PREFIX):
                if progress is not None:
                    step, total, loss = json.loads(line[len(PROGRESS_PREFIX) :])
                    progress(int(step), int(total), float(loss))
                continue
            log.write(line)
            tail.append(line.rstrip())
        code = child.wait()
    if code != 0 or not job.result_file.is_file():
        raise TrainingFailed(f"training exited with status {code}: " + " | ".join(list(tail)[-5:]))
    result: dict[str, Any] = json.loads(job.result_file.read_text())
    for leftover in (rows, job_dir / JOB_FILE, job.result_file, log_path):
        leftover.unlink(missing_ok=True)
    job_dir.rmdir()
    return result


def _report_progress(step: int, total: int, loss: float) -> None:
    print(PROGRESS_PREFIX + json.dumps([step, total, loss]), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from retrain._train import distill  # torch loads here, after the environment is set

    args = list(sys.argv[1:] if argv is None else argv)
    job = TrainJob.model_validate_json(Path(args[0]).read_text())
    if job.config.niceness:
        os.nice(job.config.niceness)  # here, not in a preexec_fn: the parent has threads
    lines = job.dataset_file.read_text().splitlines()
    dataset = DistillDataset(
        train=[_pair_from_json(json.loads(line)) for line in lines if line.strip()],
        holdout=[],
        new_examples=job.new_examples,
        replay_examples=job.replay_examples,
        dropped=job.dropped,
        by_skill=job.by_skill,
    )
    result = distill(
        job.parent_dir,
        dataset,
        job.output_dir,
        job.config,
        progress=_report_progress,
        teacher_dir=job.teacher_dir,
    )
    job.result_file.write_text(json.dumps(asdict(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
