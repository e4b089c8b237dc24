"""Chest X-ray diagnosis with DenseNet121: the library behind the notebook.

Modules, one concern each:
    config    label sets, default sizes and where the data lives
    data      label file parsing, patient-level splits, leakage and class frequencies
    images    reading PNG/JPEG files into validated grayscale arrays
    pipeline  tf.data input pipelines (normalisation, augmentation)
    losses    the weighted binary cross-entropy
    model     DenseNet121 construction and weight loading
    training  the resumable training loop behind ``train.py``
    evaluation  probabilities, AUROC with bootstrap intervals, thresholds, expert-label check
    gradcam   GradCAM heatmaps and their agreement with the NIH bounding boxes
    download  fetching the full NIH release (needs internet)
"""
