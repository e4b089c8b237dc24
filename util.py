"""Helpers that the notebook calls, gathered from the ``cxr`` package.

The exercise functions (check_for_leakage, compute_class_freqs, get_weighted_loss) are also
written by the learner in the notebook; the versions here are the reference that scripts use.
"""

import contextlib
import os


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


# Notebook outputs stay readable (and comparable by nbval) without TensorFlow's start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
with _native_stderr_silenced():
    import tensorflow  # noqa: F401

from keras.utils import set_random_seed  # noqa: E402, F401

from cxr.config import BATCH_SIZE, FOUR_CLASS_LABELS, LABELS, SEED, data_dir  # noqa: E402, F401
from cxr.data import (  # noqa: E402, F401
    build_metadata,
    is_low_resolution,
    check_for_leakage,
    compute_class_freqs,
    count_shared_patients,
    findings_to_columns,
    label_matrix,
    read_label_file,
    read_split,
    split_summary,
)
from cxr.images import load_images, read_image, to_model_size  # noqa: E402, F401
from cxr.baselines import baseline_scores, metadata_features  # noqa: E402, F401
from cxr.calibration import calibrate, expected_calibration_error, threshold_at_specificity, weighting_shift  # noqa: E402, F401
from cxr.shortcuts import controlled_origin_auroc, view_auroc  # noqa: E402, F401
from cxr.losses import get_weighted_loss  # noqa: E402, F401
from cxr.model import build_densenet121, load_pretrained_weights  # noqa: E402, F401
from cxr.inference import PER_IMAGE, ShippedModel, load_shipped_model, standardise  # noqa: E402, F401
from cxr.inference import predict as predict_probabilities  # noqa: E402, F401
from cxr.pipeline import Augmentation, make_dataset, training_statistics  # noqa: E402, F401
from cxr.evaluation import (  # noqa: E402, F401
    auroc,
    auroc_table,
    choose_thresholds,
    classification_report,
    compare_mean_auroc,
    expert_label_comparison,
    mean_auroc,
    plot_confusion_matrices,
    plot_precision_recall_curves,
    plot_roc_curves,
    read_expert_labels,
    subgroup_mean_auroc,
    threshold_metrics,
)
from cxr.gradcam import (  # noqa: E402, F401
    box_iou,
    gradcam_heatmap,
    load_boxes,
    localisation_scores,
    plot_gradcam,
    pointing_game_hit,
    randomisation_check,
    scale_box,
    summarise_localisation,
)
