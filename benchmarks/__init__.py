"""Performance figures, not tests: `make bench` and `python -m benchmarks.bench_NAME` from the
repository root. Not installed with the package; each script says what it measures and how."""


def absl_main(run):
    """An absl `main` for a benchmark whose `run()` returns its report: a user error is one
    `error:` line and exit 1 (tfcompress.errors.run_cli), success exits 0.

    Example:
        main = absl_main(run)
        if __name__ == "__main__":
            app.run(main)
    """
    def run_and_exit_zero():
        run()
        return 0

    def main(argv):
        del argv
        from tfcompress import native_logs
        from tfcompress.errors import run_cli
        native_logs.quiet()  # TensorFlow's absl lines would bury the figures
        # app.run passes main's return value to sys.exit, so it must be an exit code.
        return run_cli(run_and_exit_zero)
    return main


def markdown_table(header, rows, numeric_from=1):
    """A Markdown table: `header` cells, `rows` of cells (already formatted strings); the
    columns from `numeric_from` on are right-aligned.

    Example:
        markdown_table(["model", "top-1"], [["float", "91.94%"]])
        # ['| model | top-1 |', '|---|---:|', '| float | 91.94% |']
    """
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|",
            *(f"| {' | '.join(str(c) for c in row)} |" for row in rows)]


def write_results(out_dir, name, results, lines):
    """Writes OUT/NAME.json (`results`) and OUT/NAME.md (`lines`), and prints the lines.

    Example:
        write_results("runs/bench-x", "bench_x", rows, ["# Title", "", *table])
    """
    import json
    import os
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
