"""Rebuild a sweep's table and plots: ``python scripts/summarize.py multirun/samples/<date_time>``."""

import argparse

from vqdiffusion.eval.summary import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", help="a folder holding metrics.json files (any depth)")
    try:
        paths = summarize(parser.parse_args().folder)
    except (FileNotFoundError, ValueError) as mistake:  # the user's to fix: no traceback
        parser.exit(2, f"error: {mistake}\n")
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
