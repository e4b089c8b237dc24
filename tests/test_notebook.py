"""The notebook's graded exercises: they agree with util.py, and the generated student version fails
the public tests that the solution passes; the notebook imports util only, and util does nothing at import."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from keras import ops
from nbclient import NotebookClient

import make_student_notebook
import util

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "chest_x_ray_diagnosis.ipynb"
EXERCISES = ("check_for_leakage", "compute_class_freqs", "get_weighted_loss")


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def exercise_functions(notebook) -> dict:
    """Execute the graded cells (marked UNQ_C) on their own and return the functions they define."""
    namespace = {"np": np, "pd": pd, "ops": ops}
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code" and "# UNQ_C" in cell.source]
    assert len(cells) == len(EXERCISES)
    for source in cells:
        exec(source, namespace)
    return {name: namespace[name] for name in EXERCISES}


def test_notebook_exercises_agree_with_util_on_random_inputs(notebook):
    functions = exercise_functions(notebook)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ids1, ids2 = rng.integers(0, 40, size=20), rng.integers(0, 40, size=20)
        df1, df2 = pd.DataFrame({"PatientId": ids1}), pd.DataFrame({"PatientId": ids2})
        assert functions["check_for_leakage"](df1, df2, "PatientId") == util.check_for_leakage(df1, df2, "PatientId")

        labels = (rng.random((30, 14)) < 0.2).astype(float)
        for mine, reference in zip(functions["compute_class_freqs"](labels), util.compute_class_freqs(labels)):
            np.testing.assert_allclose(mine, reference)

        weights_pos, weights_neg = rng.random(14), rng.random(14)
        y_pred = rng.random((8, 14)).astype("float32")
        y_true = labels[:8].astype("float32")
        mine = functions["get_weighted_loss"](weights_pos, weights_neg)(y_true, y_pred)
        reference = util.get_weighted_loss(weights_pos, weights_neg)(y_true, y_pred)
        np.testing.assert_allclose(float(mine), float(reference), rtol=1e-5)


def test_strip_solutions_keeps_hints_and_indentation():
    source = ("def f():\n    ### START CODE HERE ###\n    ### BEGIN SOLUTION\n    x = 1\n    ### END SOLUTION\n"
              "    ### END CODE HERE ###\n    return x")
    stripped = make_student_notebook.strip_solutions(source)
    assert stripped == ("def f():\n    ### START CODE HERE ###\n    raise NotImplementedError()\n"
                        "    ### END CODE HERE ###\n    return x")


@pytest.mark.parametrize(
    "source, problem",
    [
        ("### BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n### END SOLUTION", "line 2"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "line 2"),
    ],
)
def test_strip_solutions_rejects_unbalanced_markers(source, problem):
    with pytest.raises(ValueError, match=problem):
        make_student_notebook.strip_solutions(source)


def run_exercise_sections(notebook) -> list:
    """Execute the notebook up to the input pipelines (setup, data, the three exercises and their checks)."""
    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## 6."):
            break
        cells.append(cell)
    partial = nbformat.from_dict({**notebook, "cells": cells})
    NotebookClient(partial, timeout=300, allow_errors=True, resources={"metadata": {"path": str(ROOT)}}).execute()
    return [cell for cell in partial.cells if cell.cell_type == "code" and "public_tests." in cell.source]


def output_text(cell) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", "") if output.output_type == "stream" else output.get("ename", ""))
    return "".join(parts)


@pytest.mark.slow
def test_solution_passes_and_student_version_fails_the_public_tests(notebook):
    solution_checks = run_exercise_sections(notebook)
    student_checks = run_exercise_sections(make_student_notebook.make_student_version(notebook))

    assert len(solution_checks) == len(student_checks) == len(EXERCISES)
    for cell in solution_checks:
        assert "All tests passed." in output_text(cell), cell.source
    for cell in student_checks:
        assert "NotImplementedError" in output_text(cell) and "All tests passed." not in output_text(cell), cell.source


def test_the_notebook_imports_util_only_and_util_gives_every_name_it_uses(notebook):
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert not re.search(r"^\s*(from|import)\s+cxr\b", code, re.MULTILINE)
    used = set(re.findall(r"\butil\.(\w+)", code))
    assert used <= set(util.__all__), used - set(util.__all__)
    assert all(getattr(util, name) is not None for name in used)


def test_importing_util_does_nothing():
    loaded = "sorted(m for m in sys.modules if m.split('.')[0] in ('cxr', 'keras', 'tensorflow'))"
    script = f"import sys, util; print({loaded})"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
