"""Job: point-in-time training set, Ray Tune over XGBoost, MLflow run, model version with alias champion.

ray job submit --working-dir . -- python jobs/train.py --trials 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.usecases.flights import pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=200)
    args, config = setup(parser)
    report = pipeline.train(
        config,
        num_samples=args.trials,
        num_boost_round=args.rounds,
        on_trial_done=lambda trial, auc: print(f"trial {trial}: valid AUC {auc:.4f}", flush=True),
    )
    print(
        f"registered {report.model_name} version {report.model_version} (alias champion): "
        f"valid AUC {report.valid_auc:.4f}, test AUC {report.test_auc:.4f}, run {report.run_id}",
        flush=True,
    )


if __name__ == "__main__":
    main()
