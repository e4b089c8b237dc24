"""The class-weighted binary cross-entropy of the course."""

from __future__ import annotations

import numpy as np
from keras import ops


def get_weighted_loss(pos_weights, neg_weights, epsilon: float = 1e-7, label_smoothing: float = 0.0):
    """Return a Keras loss: for each class the batch mean of the weighted cross-entropy, summed over classes.

    loss = sum_c mean_batch( -(w_pos[c] * y * log(p + eps) + w_neg[c] * (1 - y) * log(1 - p + eps)) )

    Args:
        pos_weights: (num_classes,) weight of positive examples per class (the negative frequencies).
        neg_weights: (num_classes,) weight of negative examples per class (the positive frequencies).
        epsilon: added inside the logarithms so that p = 0 or 1 stays finite.
        label_smoothing: s turns each target y into y * (1 - s) + s / 2, so that the model is not
            pushed to certainty by labels mined from reports; 0 is the course's loss.
    """
    pos_weights = np.asarray(pos_weights, dtype="float32")
    neg_weights = np.asarray(neg_weights, dtype="float32")

    def weighted_loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32") * (1 - label_smoothing) + label_smoothing / 2
        y_pred = ops.cast(y_pred, "float32")
        per_entry = -(
            pos_weights * y_true * ops.log(y_pred + epsilon)
            + neg_weights * (1 - y_true) * ops.log(1 - y_pred + epsilon)
        )
        return ops.sum(ops.mean(per_entry, axis=0))

    return weighted_loss

