"""Job: the rollout controller of a use case, run on the cluster until the rollout under way ends.

ray job submit --working-dir . -- python jobs/rollout.py [--usecase flights] [--plan rollout.yaml] [--tick-s 5]

With ``--plan`` it starts a rollout first (team token in ``MLSYS_TEAM_TOKEN``); without, it resumes the one
under way (after a restart of the controller, a node or the cluster: the state is durable). Exits 0 on
promotion or a hold, 3 on rollback or abort.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.errors import MLSystemError
from ml_system.rollout.controller import RolloutController
from ml_system.teams.identity import TOKEN_ENV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", default=None, help="rollout config YAML: start this rollout first")
    parser.add_argument("--tick-s", type=float, default=None)
    args, config, usecase = setup(parser)
    controller = RolloutController(config, usecase)
    try:
        if args.plan:
            state = controller.start(Path(args.plan), os.environ.get(TOKEN_ENV))
            print(f"rollout {state.id} started at {state.weight}%", flush=True)

        def show(state, result) -> None:  # type: ignore[no-untyped-def]
            if result is not None:
                print(f"step {result.step} ({result.weight:g}%): {result.summary()}", flush=True)

        final = controller.run(args.tick_s, on_tick=show)
    except MLSystemError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    if final is None:
        print(f"no rollout of '{usecase.name}' is under way", flush=True)
        return
    print(f"rollout {final.id}: {final.status}: {final.reason}", flush=True)
    sys.exit(3 if final.status in ("rolled_back", "aborted") else 0)


if __name__ == "__main__":
    main()
