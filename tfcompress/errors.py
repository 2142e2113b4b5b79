"""Exceptions tfcompress raises for bad input.

Every message names the problem and the fix. CLIs catch `TfcompressError` and
print it as one line (no traceback).
"""

import contextlib
import os


class TfcompressError(Exception):
    """Base class of the errors that are the user's to fix."""


class DataError(TfcompressError, ValueError):
    """A data set is missing, corrupt, or does not fit the model."""


class ModelLoadError(TfcompressError, ValueError):
    """A saved model file could not be loaded; the message says which and why."""


class NonFiniteWeightsError(TfcompressError, ValueError):
    """A model holds NaN or Inf weights; the message names the layer and weight."""


class RecipeError(TfcompressError, ValueError):
    """A recipe key or value is wrong; the message names it and the valid choices."""


class StageError(TfcompressError, RuntimeError):
    """Keras or TensorFlow failed inside a stage; the message names the stage and model."""


def exception_line(e):
    """`Type: message` of an exception in one line: for TF's "in user code:" errors, the
    line that says what went wrong (the last one), not the traceback before it."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("in user code:"):
        lines = [line for line in lines[1:] if not line.startswith("File ")][-1:] or lines
    text = lines[0][:300] if lines else ""
    if not text:
        return type(e).__name__
    # TF's last line often names the type already ("ValueError: Shapes ... incompatible").
    named = text.split(":", 1)[0]
    return text if named.isidentifier() and named.endswith(("Error", "Exception")) else \
        f"{type(e).__name__}: {text}"


@contextlib.contextmanager
def stage_errors(stage, model_file):
    """Turns an exception from inside Keras/TF into a one-line `StageError` naming `stage`
    and `model_file`; our own errors (already one clear line) pass through.

    Example:
        with stage_errors("03-prune", "runs/x/02-distill/model.keras"):
            model.fit(x, y)
    """
    try:
        yield
    except (TfcompressError, KeyboardInterrupt):
        raise
    except Exception as e:
        if os.environ.get("TFCOMPRESS_DEBUG"):
            raise
        raise StageError(f"stage {stage} failed on {model_file}: {exception_line(e)} (set "
                         "TFCOMPRESS_DEBUG=1 for the traceback)") from e


# What a CLI reports as one line: our errors, plus the ValueError/TypeError/OSError
# that validation and file access raise. Anything else is a bug and keeps its traceback.
USER_ERRORS = (TfcompressError, ValueError, TypeError, OSError)


def run_cli(fn, *args, **kwargs):
    """Runs `fn`; a user error becomes one `error: ...` line on stderr and exit code 1.

    Set TFCOMPRESS_DEBUG=1 to get the full traceback instead.

    Example:
        sys.exit(run_cli(main, argv))
    """
    import sys
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        if os.environ.get("TFCOMPRESS_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def parse_absl_flags(argv):
    """absl's flag parser for `app.run(flags_parser=...)`, but a bad flag is one
    `error: ...` line on stderr and exit code 2, not a usage dump.

    Example:
        app.run(main, argv=argv, flags_parser=parse_absl_flags)
    """
    import sys
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
