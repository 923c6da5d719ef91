"""Job: newest feature values into the online store.

ray job submit --working-dir . -- python jobs/materialize.py --end 2013-12-30T17:00:00-05:00 [--usecase flights]

Every registered view is written, or with ``--usecase`` the views that use case's feature service reads.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import setup

from ml_system.pipelines import steps


def _aware(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.end.tzinfo is None or (args.start is not None and args.start.tzinfo is None):
        parser.error("--end/--start need a UTC offset, e.g. 2013-12-30T17:00:00-05:00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--end", required=True, type=datetime.fromisoformat, help="ISO-8601 with UTC offset")
    parser.add_argument("--start", type=datetime.fromisoformat, default=None)
    parser.add_argument("--incremental", action="store_true")
    args, config, usecase = setup(parser, check=_aware)
    only = usecase if args.usecase else None
    written = steps.materialize(config, args.end, args.start, incremental=args.incremental, usecase=only)
    for view, rows in sorted(written.items()):
        print(f"{view}: {rows} rows upserted into the {config.online_store.type} online store", flush=True)


if __name__ == "__main__":
    main()
