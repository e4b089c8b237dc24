"""Chest X-ray diagnosis with DenseNet121: the library behind the notebook.

Modules, one concern each:
    config      label sets, default sizes and where the data lives
    data        the NIH files (labels, boxes, expert labels), patient-level splits, leakage, class frequencies
    images      reading PNG/JPEG files into validated grayscale arrays
    pipeline    tf.data input pipelines (standardisation, augmentation)
    losses      the weighted binary cross-entropy
    model       DenseNet121 construction, weight loading and the shipped model
    training    the resumable training loop behind ``train.py``
    evaluation  probabilities, AUROC with bootstrap intervals, curves, thresholds, expert-label check
    calibration from scores to probabilities: the weighting shift, Platt scaling, ECE, reliability
    gradcam     GradCAM heatmaps and their agreement with the NIH bounding boxes
    plots       every figure, drawn from numbers computed by the modules above
    app_logic   the web app without the web: one upload in, findings and overlays out
    download    fetching the full NIH release (needs internet)
"""
