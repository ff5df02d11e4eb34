"""Command line: ``python -m conformance``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="state-dict-conformance")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="start worlds and run a DTensor gather on them")
    check.add_argument("--world-sizes", default="2,4")
    check.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    args = parser.parse_args(argv)
    if args.command == "selfcheck":
        from conformance.selfcheck import selfcheck

        return selfcheck([int(s) for s in args.world_sizes.split(",")], args.backend)
    return 2


if __name__ == "__main__":
    sys.exit(main())
