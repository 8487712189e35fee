"""``python -m bench [--quick]``: runs the benchmark suite and writes bench/results/latest.*.

Also ``surveymesh bench``. See :mod:`bench.suite`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bench.suite import FULL, GROUPS, QUICK, RESULTS, run, write


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; prints the table; returns the exit code (0 even if targets are missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few runs (CI)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="directory for latest.json / latest.md"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="run only this group of figures (repeatable; default: all)",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the mesh's logs here at the end")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    only = frozenset(args.only or GROUPS)
    plan = QUICK if args.quick else FULL
    results = asyncio.run(run(plan, keep_logs=args.keep_logs, only=only))
    js, md = write(results, args.out)
    print(results["markdown"])
    print(f"wrote {js} and {md} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
