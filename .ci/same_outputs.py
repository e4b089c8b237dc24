"""Check that a re-executed notebook's outputs are those of another copy, as nbval would compare them.

    python .ci/same_outputs.py COMMITTED.ipynb EXECUTED.ipynb

CI runs the README's two commands in both orders without executing the notebook a third time:
`make test` checks the committed outputs against a fresh execution (nbval), then `make notebook`
re-executes it in place, and this script compares that execution with the committed copy, after the
substitutions of nbval_sanitize.cfg, skipping cells marked NBVAL_IGNORE_OUTPUT. Exit status 1 and
the differing cells printed when they differ.
"""

import configparser
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
IGNORED = "NBVAL_IGNORE_OUTPUT"


def substitutions() -> list[tuple[re.Pattern, str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "nbval_sanitize.cfg")
    return [(re.compile(parser[section]["regex"]), parser[section]["replace"]) for section in parser.sections()]


SKIPPED_DATA = ("image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json")  # as nbval skips them


def comparable_outputs(cell, rules) -> str:
    """The cell's outputs as nbval compares them: streams, every data format but images, errors; sanitised."""
    texts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            texts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            texts += [value for key, value in sorted(output.get("data", {}).items()) if key not in SKIPPED_DATA]
        elif output.output_type == "error":
            texts.append(f"{output.ename}: {output.evalue}")
    text = "".join(texts)
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def main(committed_path: str, executed_path: str) -> int:
    committed, executed = (nbformat.read(path, as_version=4) for path in (committed_path, executed_path))
    rules = substitutions()
    pairs = [(a, b) for a, b in zip(committed.cells, executed.cells) if a.cell_type == "code"]
    if len(committed.cells) != len(executed.cells) or any(a.source != b.source for a, b in pairs):
        print("the two notebooks do not have the same cells")
        return 1
    differing = [(a.source.splitlines() or [""])[0] for a, b in pairs
                 if IGNORED not in a.source and comparable_outputs(a, rules) != comparable_outputs(b, rules)]
    for first_line in differing:
        print(f"outputs differ in the cell starting {first_line!r}")
    print(f"{len(pairs)} code cells compared, {len(differing)} differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
