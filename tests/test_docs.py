"""The figures the READMEs give for the shipped model are those of its model card (the JSON that
export_model.py writes), rounded as printed: after a re-export, a stale table fails here."""

from __future__ import annotations

import json

import pytest

from cxr import config

CARD = json.loads(config.SHIPPED_MODEL.with_suffix(".json").read_text())
README = (config.PROJECT_ROOT / "README.md").read_text()
MODEL_README = (config.MODEL_DIR / "README.md").read_text()
MODEL, METADATA, THUMBNAIL = "model", "metadata baseline", "32x32 thumbnail baseline"


def mean(split: str, model: str, bold: bool = False) -> str:
    """'0.706 (0.674–0.735)', as the tables print a mean AUROC and its interval."""
    row = CARD["evaluation"][split]["mean_auroc"][model]
    value = f"**{row['mean AUROC']:.3f}**" if bold else f"{row['mean AUROC']:.3f}"
    return f"{value} ({row['CI low']:.3f}–{row['CI high']:.3f})"


def difference(split: str, model: str) -> str:
    """'+0.073 (+0.039 to +0.108)', a paired difference from the metadata baseline and its interval."""
    row = CARD["evaluation"][split]["mean_auroc"][model]
    return f"{row['difference']:+.3f} ({row['difference CI low']:+.3f} to {row['difference CI high']:+.3f})"


@pytest.mark.parametrize("line", [
    f"| DenseNet121 | {mean('valid', MODEL, bold=True)} | {mean('test', MODEL, bold=True)} |",
    f"| metadata baseline | {mean('valid', METADATA)} | {mean('test', METADATA)} |",
    f"| 32 × 32 thumbnail baseline | {mean('valid', THUMBNAIL)} | {mean('test', THUMBNAIL)} |",
    f"| DenseNet121 minus metadata baseline (paired) | {difference('valid', MODEL)} | {difference('test', MODEL)} |",
], ids=["model", "metadata", "thumbnail", "difference"])  # fmt: skip
def test_readme_results_table_is_the_cards(line):
    assert line in README.splitlines()


@pytest.mark.parametrize("line", [
    f"| DenseNet121 | {mean('valid', MODEL)} | {mean('test', MODEL)} | {difference('valid', MODEL)} | "
    f"{difference('test', MODEL)} |",
    f"| metadata baseline | {mean('valid', METADATA)} | {mean('test', METADATA)} | — | — |",
    f"| 32x32 thumbnail baseline | {mean('valid', THUMBNAIL)} | {mean('test', THUMBNAIL)} | "
    f"{difference('valid', THUMBNAIL)} | {difference('test', THUMBNAIL)} |",
], ids=["model", "metadata", "thumbnail"])  # fmt: skip
def test_model_card_baseline_table_is_the_cards(line):
    assert line in MODEL_README.splitlines()


@pytest.mark.parametrize("label", CARD["labels"])
def test_model_card_per_finding_row_is_the_cards(label):
    valid, test = (CARD["evaluation"][split]["auroc"][label] for split in ("valid", "test"))
    operating = CARD["test_operating_points"]["specificity 0.90"]
    row = (f"| {label} | {valid['AUROC']:.3f} ({valid['CI low']:.2f}–{valid['CI high']:.2f}) | "
           f"{test['AUROC']:.3f} ({test['CI low']:.2f}–{test['CI high']:.2f}) | {CARD['thresholds'][label]:.3f} | "
           f"{operating['sensitivity'][label]:.2f} | {operating['specificity'][label]:.2f} |")
    assert row in MODEL_README.splitlines()
