"""Generate the student version of the notebook: solutions removed, outputs cleared.

    python make_student_notebook.py [--source chest_x_ray_diagnosis.ipynb] \
        [--output student/chest_x_ray_diagnosis.ipynb]

Follows nbgrader's convention: the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
(markers included) become ``raise NotImplementedError()`` at the same indentation, so the
``### START CODE HERE`` hints stay in place for the learner.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "raise NotImplementedError()"


def strip_solutions(source: str) -> str:
    """Replace every solution block of a cell's source by a NotImplementedError stub.

    Raises:
        ValueError: for an unmatched or nested marker, naming the line.
    """
    output, inside = [], False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN} inside another solution block")
            inside = True
            output.append(re.match(r"\s*", line).group() + STUB)
        elif marker == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            output.append(line)
    if inside:
        raise ValueError(f"{BEGIN} is never closed")
    return "\n".join(output)


def make_student_version(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of the notebook with solutions stubbed and every output and execution count cleared."""
    student = nbformat.from_dict(notebook)
    for cell in student.cells:
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source)
        cell.outputs = []
        cell.execution_count = None
    return student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("chest_x_ray_diagnosis.ipynb"))
    parser.add_argument("--output", type=Path, default=Path("student/chest_x_ray_diagnosis.ipynb"))
    args = parser.parse_args()
    student = make_student_version(nbformat.read(args.source, as_version=4))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
