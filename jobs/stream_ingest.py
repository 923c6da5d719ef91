"""Run the stream consumer group as a Ray job: start it, report its status, stop it when the job ends.

ray job submit --working-dir . -- python jobs/stream_ingest.py [--consumers N] [--status-every 30]
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

from ml_system.cluster import connect, quiet
from ml_system.config import load_config
from ml_system.features.streaming import group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config (default: $MLSYS_CONFIG or ./mlsys.yaml)")
    parser.add_argument("--consumers", type=int, default=None, help="group size (default: streaming.consumers)")
    parser.add_argument("--status-every", type=float, default=30.0, help="seconds between status lines")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until stopped)")
    args = parser.parse_args()
    config = load_config(args.config)
    quiet()
    connect(config.ray)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    names = group.start(config, args.consumers)
    print(f"started {len(names)} consumers of group '{config.streaming.group}'", flush=True)
    waited = 0.0
    try:
        while not done.wait(args.status_every):
            waited += args.status_every
            print(json.dumps(group.status(config)), flush=True)
            if args.duration and waited >= args.duration:
                break
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped {len(group.stop(config))} consumers", flush=True)


if __name__ == "__main__":
    main()
