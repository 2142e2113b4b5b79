"""The `tfcompress` command: one entry point, one subcommand per job.

Example:
    tfcompress --version
    tfcompress train --model=small_cnn --epochs=5 --model_dir=runs/baseline
    tfcompress export runs/baseline/model.keras --mode float32 --mode int8_full \\
        --calibration fashion_mnist --out runs/baseline/tflite
    tfcompress inspect runs/baseline/tflite/model_int8_full.tflite --edgetpu
    tfcompress evaluate runs/baseline/tflite/model_int8_full.tflite --data fashion_mnist
    tfcompress sparsity runs/pruned/model.keras --structure 2:4
    tfcompress recipes
    tfcompress run --recipe fashion_mnist --out runs/demo
    tfcompress run --model my_model.keras --data npz:my_data.npz --out runs/ptq
    tfcompress report runs/demo
    tfcompress bench runs/baseline/tflite/*.tflite --device host-1t --device host-2t \\
        --baseline runs/baseline/tflite/model_float32.tflite --json bench.json --plot bench.png
"""

import argparse
import dataclasses
import json
import os
import sys

import tfcompress
from tfcompress.errors import run_cli
from tflite_export.convert import MODES  # TF-free: the table of export modes


def _train(flags):
    from models import train
    train.run(["tfcompress train"] + list(flags))


def _import_custom_objects(args):
    """--custom_objects MODULE (repeatable): the user's own layers, imported before loading."""
    from tfcompress.saving import import_custom_objects
    for spec in getattr(args, "custom_objects", None) or []:
        import_custom_objects(spec)


def _numbers(text, flag):
    """--mean/--std: one number or comma-separated numbers (one per channel)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be a number or comma-separated numbers (one per "
                         f"channel), got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _load_data(args, spec):
    from tfcompress.data import load_dataset
    return load_dataset(spec, scale=args.scale, mean=_numbers(args.mean, "--mean"),
                        std=_numbers(args.std, "--std"))


def _export(args):
    from tfcompress.data import calibration_samples
    from tflite_export.convert import export
    _import_custom_objects(args)
    modes = args.mode or ["float32"]
    calib = None
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration_samples must be >= 1, got {args.calibration_samples}")
    if args.calibration:
        calib = calibration_samples(_load_data(args, args.calibration).x_train,
                                    args.calibration_samples, seed=args.seed)
    if args.sparse and modes != ["float32"]:
        print("note: --sparse applies to the float32 export only", file=sys.stderr)
    model = tfcompress.load_model(args.model, allow_unsafe=args.allow_unsafe, compile=False)
    name = os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0]
    export(model, modes, args.out, representative_data=calib, batch_size=args.batch_size,
           sparse=args.sparse, name=name, log=lambda line: print(line, flush=True))
    if args.keras3:
        from tfcompress.keras3_export import save_keras3
        path = save_keras3(model, os.path.join(args.out, f"{name}_keras3.keras"))
        print(f"wrote {path} (Keras 3; checked against the tf_keras model)", flush=True)
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
    from tfcompress.data import calibration_samples
    from tflite_export.evaluate import (compare_with_keras, evaluate_tflite, format_comparison,
                                        format_evaluation, format_layer_errors,
                                        quantization_error_by_layer)
    if args.layer_errors and not args.keras:
        raise ValueError("--layer_errors needs --keras MODEL: the per-layer error is measured by "
                         "re-converting the Keras model with the quantization debugger")
    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"--max_samples must be >= 1, got {args.max_samples}")
    _import_custom_objects(args)
    ds = _load_data(args, args.data)
    x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
    result = evaluate_tflite(args.file, x, y, progress=not args.json, max_samples=args.max_samples)
    keras_model = (tfcompress.load_model(args.keras, allow_unsafe=args.allow_unsafe,
                                         compile=False) if args.keras else None)
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
    _import_custom_objects(args)
    # load_pruned_model also reads plain models, and models saved mid-pruning.
    model = load_pruned_model(args.model, allow_unsafe=args.allow_unsafe, compile=False)
    report = sparsity_report(model, args.structure)
    print(json.dumps(report, indent=2) if args.json else format_sparsity_report(report))
    return 0


def _stages(args):
    from tfcompress import stages
    for kind in stages.kinds():
        cls = stages.get(kind)
        print(f"{kind:14s} {cls.summary()}")
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default_factory is not \
                dataclasses.MISSING else field.default
            print(f"{'':14s}   {field.name} (default {default!r})")
    return 0


def _recipes(args):
    from tfcompress.config import list_recipes
    for name, description in list_recipes().items():
        print(f"{name:16s} {description}")
    return 0


def _run(args):
    from tfcompress import config, pipeline, report
    overrides = list(args.set or [])
    if args.model:
        overrides.append(f"teacher.path={args.model}")
    if args.data:
        overrides.append(f"data.dataset={args.data}")
    recipe_name = args.recipe or ("pretrained" if args.model else None)
    if not recipe_name:
        raise ValueError("give --recipe NAME|FILE (see `tfcompress recipes`), or --model FILE "
                         "--data SPEC for post-training quantization of your model")
    if args.model and not os.path.exists(args.model):
        raise ValueError(f"--model {args.model}: no such file or directory")
    recipe = config.load_recipe(recipe_name, overrides=overrides)
    _import_custom_objects(args)
    result = pipeline.run(recipe, args.out, force=args.force, allow_unsafe=args.allow_unsafe,
                          log=lambda line: print(line, flush=True))
    print()
    print(report.format_table(result))
    _print_recommendation(result)
    print(f"\nreport: {os.path.join(args.out, 'report.md')} and report.json; plot: "
          f"{os.path.join(args.out, 'pareto.png')}")
    return 0


def _print_recommendation(result):
    """The report's opening lines (budget.max_drop's pick, dominated stages), for a terminal."""
    from tfcompress.recommend import format_recommendation
    rec = result.get("recommendation")
    for line in format_recommendation(rec) if rec else ():
        print("\n" + line.replace("**", ""))


def _report(args):
    from tfcompress import report
    result = report.build_report(args.dir)
    paths = report.write_report(args.dir, result)
    print(report.format_table(result))
    _print_recommendation(result)
    print("\nwrote " + ", ".join(paths.values()))
    return 0


def _bench(args):
    from tflite_export import benchmark
    profiles = benchmark.load_profiles(args.devices_file)
    if args.list_devices:
        print(benchmark.format_profiles(profiles))
        return 0
    if not args.files:
        raise ValueError("bench needs at least one .tflite file (or --list-devices)")
    result = benchmark.benchmark_models(
        args.files, devices=args.device or ["host-1t"], runs=args.runs,
        min_seconds=args.min_seconds, max_seconds=args.max_seconds, warmup=args.warmup,
        baseline=args.baseline, seed=args.seed, timeout_s=args.timeout, profiles=profiles,
        crosscheck=args.crosscheck, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        from tfcompress.saving import write_json_atomic
        write_json_atomic(args.json, result)
    if args.plot and benchmark.plot(result, args.plot) is None:
        print("note: no plot (matplotlib is not installed, or no model ran)", file=sys.stderr)
    print(benchmark.format_markdown(result))
    # Exit 1 when any model (or an asked-for cross-check) failed; the others' figures still print.
    return 1 if result["failures"] else 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one `error:` line (as everywhere else), not a usage dump."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr, flush=True)
        sys.exit(2)


def _trust_flags(p):
    p.add_argument("--allow_unsafe", action="store_true",
                   help="load a model that holds code (Lambda layers...; trusted files only)")
    p.add_argument("--custom_objects", action="append", metavar="MODULE",
                   help="import your module (a name, or a .py path) first, so the custom "
                        "layers it defines load; it runs that module's code; repeatable")


def _data_scale_flags(p):
    from tfcompress.data import SCALES  # numpy only
    p.add_argument("--scale", choices=SCALES, default="auto",
                   help="how stored values map to the model's input: auto (uint8 / 255, "
                        "other data as stored), unit (/ 255), none, symmetric ([-1, 1])")
    p.add_argument("--mean", help="then subtract this (a number, or one per channel: a,b,c)")
    p.add_argument("--std", help="then divide by this (a number, or one per channel)")


def build_parser():
    parser = _Parser(
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
    p.add_argument("--mode", action="append", metavar="MODE",
                   help="repeat for several (default float32): " + "; ".join(
                       f"{m.name}: {m.description}" for m in MODES.values()))
    p.add_argument("--calibration", metavar="DATA",
                   help="dataset spec whose training split calibrates int8/int16x8 modes "
                        "(fashion_mnist, npz:PATH, ...)")
    p.add_argument("--calibration_samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="picks the calibration samples")
    p.add_argument("--batch_size", type=int, default=1, help="fixed batch dimension")
    p.add_argument("--sparse", action="store_true",
                   help="store pruned float32 weights sparse (float32 only)")
    p.add_argument("--keras3", action="store_true",
                   help="also write NAME_keras3.keras, the model as a Keras 3 file (float or "
                        "pruned models; checked to compute the same)")
    p.add_argument("--out", required=True, help="output folder; files are NAME_MODE.tflite")
    _data_scale_flags(p)
    _trust_flags(p)
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
    _data_scale_flags(p)
    _trust_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sparsity", help="per-layer sparsity of a Keras model (pruned or stripped)")
    p.add_argument("model", help=".keras, .h5 or SavedModel directory")
    p.add_argument("--structure", help="also check a structure: M:N such as 2:4, or a block 1x4")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _trust_flags(p)
    p.set_defaults(func=_sparsity)
    p = sub.add_parser("stages", help="list the stage kinds a recipe can use, with their keys")
    p.set_defaults(func=_stages)

    p = sub.add_parser("recipes", help="list the built-in recipes")
    p.set_defaults(func=_recipes)

    p = sub.add_parser("run", help="run a recipe: stages, export, evaluation, benchmark, report")
    p.add_argument("--recipe", help="a built-in recipe name (tfcompress recipes) or a YAML/JSON "
                                    "file; default with --model: pretrained")
    p.add_argument("--out", required=True, help="output folder (stages, report.md, report.json)")
    p.add_argument("--force", action="store_true", help="redo every stage, even finished ones")
    p.add_argument("--model", help="your trained model file (sets teacher.path)")
    p.add_argument("--data", help="dataset spec (sets data.dataset): fashion_mnist, npz:PATH, ...")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. stages.0.train.epochs=1, "
                        "data.scale=none or data.max_train_samples=5000; repeatable")
    _trust_flags(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("report", help="re-render report.md/report.json/pareto.png of a run")
    p.add_argument("dir", help="the --out folder of a `tfcompress run`")
    p.set_defaults(func=_report)

    p = sub.add_parser("bench", help="latency, memory and size of .tflite files on host device "
                                     "profiles (each run in its own process)")
    p.add_argument("files", nargs="*", metavar="FILE", help=".tflite files")
    p.add_argument("--device", action="append",
                   help="device profile; repeat for several (default host-1t; see --list-devices)")
    p.add_argument("--runs", type=int, default=50, help="at least this many timed runs...")
    p.add_argument("--min_seconds", type=float, default=1.0, help="...and at least this long...")
    p.add_argument("--max_seconds", type=float, default=150.0, help="...but stop timing after this")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs after the first inference")
    p.add_argument("--baseline", metavar="FILE",
                   help="model the ratios are against (default: the first FILE)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random inputs")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds before a model's process is killed")
    p.add_argument("--crosscheck", action="store_true",
                   help="also run the official litert-benchmark and compare medians")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a latency-vs-size PNG")
    p.add_argument("--devices-file", "--devices_file", dest="devices_file", metavar="PATH",
                   help="JSON file of extra device profiles")
    p.add_argument("--list-devices", "--list_devices", dest="list_devices",
                   action="store_true", help="print the device profiles and exit")
    p.set_defaults(func=_bench)
    return parser


# Subcommands whose flags belong to an absl binary: name -> runner(flags).
ABSL_COMMANDS = {"train": _train}


def main(argv=None):
    """The `tfcompress` command. Run as a program (argv None) it first quiets TensorFlow's
    native log lines (tfcompress.native_logs; TFCOMPRESS_DEBUG=1 keeps them)."""
    if argv is None:
        from tfcompress import native_logs
        native_logs.quiet()
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
