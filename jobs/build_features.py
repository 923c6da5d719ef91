"""Job: a use case's offline feature tables into Delta; its definitions into the registry.

ray job submit --working-dir . -- python jobs/build_features.py [--usecase flights]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.pipelines import steps


def main() -> None:
    _, config, usecase = setup(argparse.ArgumentParser(description=__doc__))
    versions = steps.build_features(config, usecase)
    print("built feature tables:", json.dumps(versions, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
