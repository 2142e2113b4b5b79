"""The `tfcompress` command: one entry point, one subcommand per job.

Example:
    tfcompress --version
    tfcompress train --model=small_cnn --epochs=5 --model_dir=runs/baseline
    tfcompress export runs/baseline/model.keras --mode float32 --mode int8_full \\
        --calibration fashion_mnist --out runs/baseline/tflite
    tfcompress inspect runs/baseline/tflite/model_int8_full.tflite --edgetpu
    tfcompress evaluate runs/baseline/tflite/model_int8_full.tflite --data fashion_mnist
    tfcompress sparsity runs/pruned/model.keras --structure 2:4
"""

import argparse
import json
import sys

import tfcompress
from tfcompress.errors import run_cli


def _train(flags):
    from models import train
    train.run(["tfcompress train"] + list(flags))


def _export(args):
    from tfcompress.data import calibration_samples, load_dataset
    from tflite_export.convert import export
    modes = args.mode or ["float32"]
    calib = None
    if args.calibration:
        calib = calibration_samples(load_dataset(args.calibration).x_train,
                                    args.calibration_samples, seed=args.seed)
    if args.sparse and modes != ["float32"]:
        print("note: --sparse applies to the float32 export only", file=sys.stderr)
    export(args.model, modes, args.out, representative_data=calib, batch_size=args.batch_size,
           sparse=args.sparse, log=lambda line: print(line, flush=True))
    return 0


def _inspect(args):
    from tflite_export.inspect import (edgetpu_report, format_edgetpu, format_inspection,
                                       inspect_tflite)
    info = inspect_tflite(args.file)
    report = edgetpu_report(args.file) if args.edgetpu else None
    if args.json:
        out = dict(info)
        if report is not None:
            out["edgetpu"] = report
        print(json.dumps(out, indent=2, default=str))
    else:
        print(format_inspection(info))
        if report is not None:
            print()
            print(format_edgetpu(report))
    return 0


def _evaluate(args):
    from tfcompress.data import calibration_samples, load_dataset
    from tflite_export.evaluate import (compare_with_keras, evaluate_tflite, format_comparison,
                                        format_evaluation, format_layer_errors,
                                        quantization_error_by_layer)
    if args.layer_errors and not args.keras:
        raise ValueError("--layer_errors needs --keras MODEL: the per-layer error is measured by "
                         "re-converting the Keras model with the quantization debugger")
    ds = load_dataset(args.data)
    x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
    result = evaluate_tflite(args.file, x, y, progress=not args.json, max_samples=args.max_samples)
    keras_model = tfcompress.load_model(args.keras) if args.keras else None
    if keras_model is not None:
        result["keras_agreement"] = compare_with_keras(args.file, keras_model, x,
                                                       max_samples=args.max_samples)
    if args.layer_errors:
        result["layer_errors"] = quantization_error_by_layer(
            keras_model, calibration_samples(ds.x_train, 200, seed=0))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(format_evaluation(result))
    if keras_model is not None:
        print(format_comparison(result["keras_agreement"]))
    if args.layer_errors:
        print(format_layer_errors(result["layer_errors"]))
    return 0


def _sparsity(args):
    from tfcompress.pruning import format_sparsity_report, load_pruned_model, sparsity_report
    # load_pruned_model also reads plain models, and models saved mid-pruning.
    model = load_pruned_model(args.model, allow_unsafe=args.allow_unsafe)
    report = sparsity_report(model, args.structure)
    print(json.dumps(report, indent=2) if args.json else format_sparsity_report(report))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfcompress",
        description="Compress tf_keras models for mobile and Edge TPU deployment.")
    parser.add_argument("--version", action="version",
                        version=f"tfcompress {tfcompress.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Listed for --help only: main() hands everything after `train` to the absl binary,
    # because argparse's REMAINDER drops `--flag=value` arguments in subparsers.
    sub.add_parser("train", help="train a zoo model (absl flags; see `tfcompress train --help`)")

    p = sub.add_parser("export", help="convert a Keras model to .tflite files")
    p.add_argument("model", help=".keras, .h5 or SavedModel directory")
    p.add_argument("--mode", action="append",
                   help="float32, float16, dynamic, int8, int8_full or int16x8; repeat for "
                        "several (default float32)")
    p.add_argument("--calibration", metavar="DATA",
                   help="dataset spec whose training split calibrates int8/int16x8 modes "
                        "(fashion_mnist, npz:PATH, ...)")
    p.add_argument("--calibration_samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="picks the calibration samples")
    p.add_argument("--batch_size", type=int, default=1, help="fixed batch dimension")
    p.add_argument("--sparse", action="store_true",
                   help="store pruned float32 weights sparse (float32 only)")
    p.add_argument("--out", required=True, help="output folder; files are NAME_MODE.tflite")
    p.set_defaults(func=_export)

    p = sub.add_parser("inspect", help="ops, dtypes, sizes, MACs of a .tflite; Edge TPU check")
    p.add_argument("file")
    p.add_argument("--edgetpu", action="store_true",
                   help="static Edge TPU fitness check (not the Edge TPU compiler)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("evaluate", help="accuracy of a .tflite through the TFLite interpreter")
    p.add_argument("file")
    p.add_argument("--data", required=True, help="dataset spec (fashion_mnist, npz:PATH, ...)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--max_samples", type=int, default=None)
    p.add_argument("--keras", metavar="MODEL", help="also report agreement with this Keras model")
    p.add_argument("--layer_errors", action="store_true",
                   help="per-layer int8 quantization error of the --keras model, worst first")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sparsity", help="per-layer sparsity of a Keras model (pruned or stripped)")
    p.add_argument("model", help=".keras, .h5 or SavedModel directory")
    p.add_argument("--structure", help="also check a structure: M:N such as 2:4, or a block 1x4")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--allow_unsafe", action="store_true",
                   help="allow Lambda layers with Python code (trusted files only)")
    p.set_defaults(func=_sparsity)
    return parser


# Subcommands whose flags belong to an absl binary: name -> runner(flags).
ABSL_COMMANDS = {"train": _train}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ABSL_COMMANDS:
        return ABSL_COMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
