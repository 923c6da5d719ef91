"""Job: a use case's point-in-time training set, Ray Tune over XGBoost, MLflow run, model version @champion.

ray job submit --working-dir . -- python jobs/train.py --trials 8 [--usecase flights]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.pipelines import steps
from ml_system.teams.jobs import team_admission_from_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None)
    args, config, usecase = setup(parser)
    report = steps.train(
        config,
        usecase,
        num_samples=args.trials,
        num_boost_round=args.rounds,
        admission=team_admission_from_env(config.teams.state_dir),  # a team's job trains on its quota
        on_trial_done=lambda trial, value: print(
            f"trial {trial}: valid {usecase.training.metric} {value:.4f}", flush=True
        ),
    )
    print(f"registered {report.summary()} (alias {report.alias}), run {report.run_id}", flush=True)


if __name__ == "__main__":
    main()
