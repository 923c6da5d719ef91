"""Job: start the pipeline scheduler on the cluster (a detached, named Ray actor) and return.

ray job submit --working-dir . -- python jobs/scheduler.py [--stop]

The actor outlives this job; its schedules come from the config's ``pipelines.schedules`` and
``pipelines.triggers``, its state from the pipelines' storage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from _common import setup

from ml_system.pipelines.scheduler import start_scheduler, stop_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop the running scheduler instead")
    args, config, _ = setup(parser)
    if args.stop:
        print("scheduler stopped" if stop_scheduler() else "no scheduler was running", flush=True)
        return
    status = ray.get(start_scheduler(config).status.remote(), timeout=120)
    jobs = [s.name for s in config.pipelines.schedules] + [t.name for t in config.pipelines.triggers]
    print(f"scheduler running as {status['owner']}: {', '.join(jobs) or 'no schedules configured'}", flush=True)


if __name__ == "__main__":
    main()
