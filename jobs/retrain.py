"""Job: a use case's retraining pipeline (ingest, validate, training set, tune, evaluate, register challenger).

ray job submit --working-dir . -- python jobs/retrain.py [--usecase flights] [--trials 8] [--as-of ISO-8601]

Each step runs as a Ray task named ``pipeline:<use case>:<step>`` (the dashboard's Jobs page lists them
under this job); the run's record is in ``mlsys pipeline show RUN``. Exits 1 when the run fails.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.pipelines.runner import RunParams, run_pipeline


def _aware(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.as_of is not None and args.as_of.tzinfo is None:
        parser.error("--as-of needs a UTC offset, e.g. 2013-12-01T00:00:00+00:00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=datetime.fromisoformat, default=None, help="ISO-8601 with UTC offset")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the offline tables even if they exist")
    args, config, usecase = setup(parser, check=_aware)
    params = RunParams(trials=args.trials, rounds=args.rounds, seed=args.seed, rebuild=args.rebuild)

    def on_step(record, step) -> None:  # type: ignore[no-untyped-def]
        if step.status not in ("pending", "running"):
            print(f"step {step.name}: {step.status} ({step.duration_s:.1f} s) {step.error}", flush=True)

    record = run_pipeline(config, usecase, params=params, as_of=args.as_of, trigger="job", on_step=on_step)
    print(f"run {record.run_id}: {record.status} {record.model_version or record.error}", flush=True)
    sys.exit(0 if record.status == "succeeded" else 1)


if __name__ == "__main__":
    main()
