"""Job: a use case's retraining pipeline (ingest, validate, training set, tune, evaluate, register challenger).

ray job submit --working-dir . -- python jobs/retrain.py [--usecase flights] [--trials 8] [--as-of ISO-8601]
    [--run-id ID --steps STEP[,STEP...]]

``--steps`` runs only those steps of run ``--run-id`` (one Airflow task per step does this); the
steps they read come from the run's record, left there by the earlier calls. Each step runs as a
Ray task named ``pipeline:<use case>:<step>`` (the dashboard's Jobs page lists them under this
job); the run's record is in ``mlsys pipeline show RUN``. Exits 1 when a step it ran failed.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.errors import MLSystemError
from ml_system.pipelines.runner import RunParams, run_pipeline


def _aware(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.as_of is not None and args.as_of.tzinfo is None:
        parser.error("--as-of needs a UTC offset, e.g. 2013-12-01T00:00:00+00:00")
    if args.run_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", args.run_id):
        parser.error(f"--run-id '{args.run_id}' may hold only letters, digits, '_', '.' and '-'")
    if args.steps is not None and args.run_id is None:
        parser.error("--steps needs --run-id: the steps it does not run come from that run's record")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=datetime.fromisoformat, default=None, help="ISO-8601 with UTC offset")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the offline tables even if they exist")
    parser.add_argument("--trigger", default="job", help="what started the run, for its record")
    parser.add_argument("--run-id", default=None, help="run id (default: a new one); the same id resumes that run")
    parser.add_argument(
        "--steps", type=lambda v: [n for n in v.split(",") if n], default=None, help="only these steps, comma-separated"
    )
    args, config, usecase = setup(parser, check=_aware)
    params = RunParams(trials=args.trials, rounds=args.rounds, seed=args.seed, rebuild=args.rebuild)

    def on_step(record, step) -> None:  # type: ignore[no-untyped-def]
        if step.status not in ("pending", "running"):
            print(f"step {step.name}: {step.status} ({step.duration_s:.1f} s) {step.error}", flush=True)

    try:
        record = run_pipeline(
            config, usecase, params=params, as_of=args.as_of, trigger=args.trigger, on_step=on_step,
            run_id=args.run_id, only=args.steps,
        )  # fmt: skip
    except MLSystemError as exc:
        parser.exit(1, f"error: {exc}\n")
    ran = [record.step(n) for n in (args.steps or [s.name for s in record.steps])]
    ok = all(s.status in ("succeeded", "cached") for s in ran)
    print(f"run {record.run_id}: {record.status} {record.model_version or record.error}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
