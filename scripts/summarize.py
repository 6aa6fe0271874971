"""Rebuild a sweep's table and plots: ``python scripts/summarize.py multirun/samples/<date_time>``."""

import argparse

from vqdiffusion.eval.summary import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", help="a folder holding metrics.json files (any depth)")
    for path in summarize(parser.parse_args().folder):
        print(path)


if __name__ == "__main__":
    main()
