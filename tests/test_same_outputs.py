"""`.ci/same_outputs.py`, CI's check that a re-executed notebook gives the committed outputs."""

import importlib.util
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "same_outputs.py"
spec = importlib.util.spec_from_file_location("same_outputs", SCRIPT)
same_outputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_outputs)


def notebook(tmp_path, name, printed: str, ignored_printed: str = "12:00:01") -> str:
    cells = [new_code_cell("print(x)", outputs=[new_output("stream", name="stdout", text=printed)]),
             new_code_cell("# NBVAL_IGNORE_OUTPUT\nprint(time)",
                           outputs=[new_output("stream", name="stdout", text=ignored_printed)])]
    path = tmp_path / name
    nbformat.write(new_notebook(cells=cells), path)
    return str(path)


def test_outputs_equal_after_sanitising_pass_and_other_outputs_fail(tmp_path, capsys):
    committed = notebook(tmp_path, "committed.ipynb", "AUROC 0.7012\n")
    assert same_outputs.main(committed, notebook(tmp_path, "same.ipynb", "AUROC 0.7049\n", "12:07:44")) == 0
    assert same_outputs.main(committed, notebook(tmp_path, "other.ipynb", "AUROC 0.71\n")) == 1
    assert "print(x)" in capsys.readouterr().out


def test_an_empty_cell_whose_outputs_differ_is_named_without_a_crash(tmp_path, capsys):
    def with_empty_cell(name, printed):
        path = tmp_path / name
        nbformat.write(new_notebook(cells=[new_code_cell("", outputs=[new_output("stream", name="stdout",
                                                                                 text=printed)])]), path)
        return str(path)

    assert same_outputs.main(with_empty_cell("a.ipynb", "one\n"), with_empty_cell("b.ipynb", "two\n")) == 1
    assert "outputs differ in the cell starting ''" in capsys.readouterr().out
