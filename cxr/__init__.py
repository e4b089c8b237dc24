"""Chest X-ray diagnosis with DenseNet121: the library behind the notebook.

Modules, one concern each:
    config        label sets, defaults and where the data lives
    files         atomic writes: a file is its old self or wholly new
    data          the NIH files (labels, boxes, expert labels), patient-level splits, leakage, class frequencies
    images        reading PNG/JPEG files into validated grayscale arrays; a split as arrays
    pipeline      tf.data input pipelines (augmentation, batches)
    losses        the weighted binary cross-entropy
    fast_layers   fused batch normalisation and the training precision
    model         DenseNet121 construction and weight loading
    inference     standardisation, the batched forward pass, the shipped model (weights + JSON)
    training      the training recipe behind ``train.py``
    run_directory a training run's files, resume and per-epoch commit
    multi_worker  what lets Keras' fit run across several machines
    checks        the label and score arrays that evaluation and thresholds take
    evaluation    AUROC with bootstrap intervals, curves, the expert-label check
    thresholds    operating thresholds and the metrics at them
    baselines     the metadata and thumbnail logistic regressions the model must beat
    calibration   from scores to probabilities: the weighting shift, Platt scaling, ECE, reliability
    shortcuts     can the image's origin or view be read off its pixels or scores?
    gradcam       GradCAM heatmaps and their agreement with the NIH bounding boxes
    plots         every figure, drawn from numbers computed by the modules above
    app_logic     the web app without the web: one upload in, findings and overlays out
    download      fetching the full NIH release (needs internet)
"""
