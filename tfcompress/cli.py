"""The `tfcompress` command: one entry point, one subcommand per job.

Example:
    tfcompress --version
    tfcompress train --model=small_cnn --epochs=5 --model_dir=runs/baseline
"""

import argparse
import sys

import tfcompress


def _train(flags):
    from models import train
    train.run(["tfcompress train"] + list(flags))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfcompress",
        description="Compress tf_keras models for mobile and Edge TPU deployment.")
    parser.add_argument("--version", action="version", version=f"tfcompress {tfcompress.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Listed for --help only: main() hands everything after `train` to the absl binary,
    # because argparse's REMAINDER drops `--flag=value` arguments in subparsers.
    sub.add_parser("train", help="train a zoo model (absl flags; see `tfcompress train --help`)")
    return parser


# Subcommands whose flags belong to an absl binary: name -> runner(flags).
ABSL_COMMANDS = {"train": _train}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ABSL_COMMANDS:
        return ABSL_COMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
