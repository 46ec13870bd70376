"""`python -m bench [SUITE] [options]`: run a benchmark suite (default: grpc).

`python -m bench --help` lists the suites; `python -m bench SUITE --help` shows its options.
Nothing is installed here: `nox -s bench` provides the Python packages and h2load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.errors import BenchError
from bench.report import DEFAULT_RESULTS_DIR
from bench.suites import DEFAULT_SUITE, load_suites


def main(argv: Sequence[str] | None = None) -> int:
    suites = load_suites()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=f"Prism benchmarks (docs/benchmarks.md). Without SUITE: {DEFAULT_SUITE}.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--repeat",
        type=int,
        help="rounds; medians are reported (default 3, plugins suite 5; --quick 1)",
    )
    common.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    common.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="where the JSON (and markdown) results and server logs go (default bench/results)",
    )
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for suite in suites.values():
        suite.add_arguments(
            sub.add_parser(
                suite.name, parents=[common], help=suite.summary, description=suite.summary
            )
        )
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*suites, "-h", "--help"):
        args_list.insert(0, DEFAULT_SUITE)
    args = parser.parse_args(args_list)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        return suites[args.suite].run(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
