"""The notebook's one import: every name it uses from the ``cxr`` package, in one place.

Importing util does nothing. A name is imported from its module the first time it is looked up
(``util.auroc``), and that first look-up imports TensorFlow with its C++ start-up lines silenced,
so that the notebook's outputs stay readable and comparable.

The exercise functions (check_for_leakage, compute_class_freqs, get_weighted_loss) are also
written by the learner in the notebook; the versions here are the reference that the tests use.
"""

import contextlib
import importlib
import os
import sys

# Module -> the names util gives the notebook (and the tests) from it.
EXPORTS = {
    "keras.utils": ("set_random_seed",),
    "cxr.config": ("FULL_RESOLUTION_DIR", "LABEL_FILE", "LABELS", "data_dir"),
    "cxr.data": (
        "check_for_leakage", "compute_class_freqs", "count_shared_patients", "findings_to_columns",
        "is_low_resolution", "label_matrix", "load_boxes", "read_label_file", "read_split",
    ),
    "cxr.images": ("load_split", "read_image", "to_model_size"),
    "cxr.shortcuts": ("controlled_origin_auroc", "view_auroc"),
    "cxr.losses": ("get_weighted_loss",),
    "cxr.pipeline": ("Augmentation", "make_dataset", "training_statistics"),
    "cxr.model": ("build_densenet121",),
    "cxr.inference": ("PER_IMAGE", "load_shipped_model", "predict", "read_card", "standardise"),
    "cxr.evaluation": (
        "auroc", "auroc_table", "compare_mean_auroc", "expert_label_comparison", "mean_auroc", "mean_class_auroc",
        "precision_recall_curves", "roc_curves", "subgroup_mean_auroc",
    ),
    "cxr.baselines": ("baseline_scores", "metadata_features"),
    "cxr.calibration": ("calibrate", "expected_calibration_error", "reliability_curves"),
    "cxr.thresholds": ("choose_thresholds", "classification_report", "threshold_at_specificity", "threshold_metrics"),
    "cxr.gradcam": (
        "explain_findings", "localisation_scores", "pointing_margin", "randomisation_check", "summarise_localisation",
    ),
    "cxr.plots": (
        "plot_class_frequencies", "plot_confusion_matrices", "plot_gradcam", "plot_image_grid",
        "plot_precision_recall_curves", "plot_reliability", "plot_roc_curves",
    ),
}  # fmt: skip
_HOME = {name: module for module, names in EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines bypass Python and its log level."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow, if nothing has yet, without its start-up chatter, and keep its later logs quiet."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with _native_stderr_silenced():
            import tensorflow  # noqa: F401


def __getattr__(name: str):
    """``util.NAME``: the name from its module (PEP 562), kept here for the next look-up."""
    if name not in _HOME:
        raise AttributeError(f"module 'util' has no attribute {name!r}; it gives only {__all__}.")
    _import_tensorflow_quietly()
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
