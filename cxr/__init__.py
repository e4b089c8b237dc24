"""Chest X-ray diagnosis with DenseNet121: the library behind the notebook.

Modules, one concern each:
    config      label sets, default sizes and where the data lives
    data        label file parsing, patient-level splits, leakage and class frequencies
    images      reading PNG/JPEG files into validated grayscale arrays
    pipeline    tf.data input pipelines (standardisation, augmentation)
    losses      the weighted binary cross-entropy
    model       DenseNet121 construction, weight loading and the shipped model
    training    the resumable training loop behind ``train.py``
    evaluation  probabilities, AUROC with bootstrap intervals, thresholds, expert-label check
    gradcam     GradCAM heatmaps and their agreement with the NIH bounding boxes
    plots       figures of the notebook's first half
    app_logic   the web app without the web: one upload in, findings and overlays out
    download    fetching the full NIH release (needs internet)
"""
