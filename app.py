"""A local web app: upload a chest X-ray, get the 14 probabilities and GradCAM overlays.

    .venv/bin/python app.py [--port 7860] [--model models/densenet121_cxr14]

It serves on http://127.0.0.1:PORT only, offline (no analytics, no share link, no web fonts), and
loads the shipped weights once at start-up. The logic lives in ``cxr/app_logic.py``.
Teaching project, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import os

# Before gradio is imported: no usage analytics, no version check, no hub look-ups.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from cxr.app_logic import (  # noqa: E402
    COLUMNS,
    DEFAULT_MODEL,
    DISCLAIMER,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    TOP_K,
    Predictor,
    load_predictor,
)
from cxr.pipeline import PER_IMAGE  # noqa: E402

HOST = "127.0.0.1"
TITLE = "Chest X-ray findings (DenseNet121, NIH ChestX-ray14)"
MARKED_STYLE = "background-color: #fde68a; font-weight: bold"
CSS = "#disclaimer {border: 2px solid #b91c1c; border-radius: 8px; padding: 0 12px; background: #fef2f2;}"


def display_table(table: pd.DataFrame):
    """The findings table as shown in the page: three decimals, 'n/a' for a missing threshold, and
    the findings above their threshold highlighted."""
    shown = table.copy()
    shown["Probability"] = [f"{value:.3f}" for value in table["Probability"]]
    shown["Threshold"] = ["n/a" if pd.isna(value) else f"{value:.3f}" for value in table["Threshold"]]
    shown = shown.astype(str)
    if shown.empty:
        return shown

    def highlight(row: pd.Series) -> list[str]:
        style = MARKED_STYLE if row["Above threshold"] == "yes" else ""
        return [style] * len(row)

    return shown.style.apply(highlight, axis=1)


def model_description(predictor: Predictor) -> str:
    settings = predictor.settings
    if predictor.statistics == PER_IMAGE:
        standardisation = "each image to mean 0 and std 1, as in training"
    else:
        standardisation = f"with the training mean {predictor.statistics[0]:.1f} and std {predictor.statistics[1]:.1f}"
    lines = [
        f"DenseNet121, {len(predictor.labels)} findings, input {predictor.image_size} px; images are "
        f"standardised {standardisation}."
    ]
    mean_auroc = settings.get("mean_auroc")
    if isinstance(mean_auroc, dict) and mean_auroc:
        lines.append("Mean AUROC: " + ", ".join(
            f"{split} {value:.3f}" if isinstance(value, (int, float)) else f"{split} {value}"
            for split, value in mean_auroc.items()) + ".")
    if predictor.thresholds is None:
        lines.append("Validated thresholds are unavailable for this model: no finding is marked.")
    else:
        rule = settings.get("threshold_rule", "chosen on the validation split")
        lines.append(f"A finding is marked when its probability reaches its threshold ({rule}).")
    return " ".join(lines)


def build_app(predictor: Predictor) -> gr.Blocks:
    def analyse(path: str | None):
        table, overlay, message = predictor.diagnose(path)
        return display_table(table), overlay, message

    def clear():
        return pd.DataFrame(columns=COLUMNS), None, "Upload a chest X-ray to see its findings."

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(f"**Disclaimer.** {DISCLAIMER}", elem_id="disclaimer")
        gr.Markdown(
            "Upload a frontal chest radiograph (PNG or JPEG, any size up to "
            f"{MAX_PIXELS / 1e6:.0f} megapixels and {MAX_FILE_BYTES // 2**20} MB, grayscale or colour, "
            f"8 or 16 bit). The table lists the {len(predictor.labels)} findings by probability; the "
            f"GradCAM overlays show where the model looked for the top {TOP_K}. "
            + model_description(predictor)
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray (PNG or JPEG)", file_count="single", type="filepath",
                                 elem_id="upload")
                message = gr.Markdown("Upload a chest X-ray to see its findings.", elem_id="message")
            with gr.Column(scale=2):
                findings = gr.Dataframe(value=pd.DataFrame(columns=COLUMNS), headers=COLUMNS, label="Findings",
                                        interactive=False, elem_id="findings", max_height=600)
        gr.Markdown(f"### GradCAM: where the model looked for the top {TOP_K} findings")
        overlay = gr.Image(label=f"GradCAM, top {TOP_K} findings", show_label=False, type="pil",
                           interactive=False, elem_id="gradcam", format="png")
        upload.upload(analyse, inputs=upload, outputs=[findings, overlay, message], api_name="diagnose")
        upload.clear(clear, outputs=[findings, overlay, message], api_name=False)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default: 7860)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="model prefix, with .json and .weights.h5 beside it (default: models/densenet121_cxr14)")
    args = parser.parse_args(argv)
    print(f"Loading {args.model} ...", flush=True)
    try:
        predictor = load_predictor(args.model, warm_up=True)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"app.py: cannot load the model: {error}\n")
    app = build_app(predictor)
    # Several uploads at once: the queue runs two at a time, the predictor's lock guards the model.
    app.queue(default_concurrency_limit=2, max_size=64)
    app.launch(
        server_name=HOST,
        server_port=args.port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        show_error=False,
        max_file_size=MAX_FILE_BYTES,
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "monospace"]),
        css=CSS,
        footer_links=[],
    )


if __name__ == "__main__":
    main()
