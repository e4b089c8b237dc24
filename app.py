"""A local web app: upload a chest X-ray, get the 14 probabilities and GradCAM overlays.

    .venv/bin/python app.py [--port 7860] [--model models/densenet121_cxr14]

It serves on http://127.0.0.1:PORT only, offline (no analytics, no share link, no web fonts), and
loads the shipped weights once at start-up. The logic lives in ``cxr/app_logic.py``.
Teaching project, not a diagnostic device.

It answers only requests addressed to itself (Host 127.0.0.1:PORT or localhost:PORT) and, when they
carry an Origin, coming from its own page: another site open in the same browser, or one that
rebinds its DNS name to 127.0.0.1, cannot use it. Uploads are bounded in size and deleted soon
after; the GradCAM picture is sent inline, never written to disk.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import socket
import time

# Before gradio is imported: no usage analytics, no version check, no hub look-ups.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: the overlays are drawn off screen, in the server's threads

import gradio as gr
import pandas as pd
from gradio.utils import get_upload_folder
from PIL import Image
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from cxr.app_logic import (
    COLUMNS,
    DEFAULT_MODEL,
    DISCLAIMER,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    TOP_K,
    Predictor,
    load_predictor,
)
from cxr.inference import PER_IMAGE

HOST = "127.0.0.1"
LOCAL_NAMES = (HOST, "localhost")
# Gradio deletes every upload CACHE_AGE_S seconds after it arrived (checking every CACHE_CHECK_S),
# and all when the server stops. Not at the end of its analysis: Gradio stores an upload under the
# hash of its content, so two requests with the same file share one path, and deleting it after one
# analysis would pull it from under the other, still queued. An upload still waiting for its
# analysis after CACHE_AGE_S gets a message asking to upload it again.
CACHE_CHECK_S = 5
CACHE_AGE_S = 30
# The server listens on 127.0.0.1 only, so every client has the same address: what one client may
# store is what all may, counted as the files of the upload folder not yet due for deletion (older
# ones are another Gradio app's or an earlier run's). Two uploads of the largest size, framing included.
# Multipart framing around one file: its boundary lines and part headers (file name included).
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_STORED_BYTES = 2 * (MAX_FILE_BYTES + FORM_OVERHEAD_BYTES)
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


def overlay_html(picture: Image.Image | None) -> str:
    """The GradCAM picture as an <img> with a data URL: nothing is written to the server's disk, and
    the response names no server path."""
    if picture is None:
        return ""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="GradCAM overlays" style="max-width: 100%">'


def recent_bytes(folder: str, seconds: float) -> int:
    """The bytes of the files under ``folder`` written in the last ``seconds``."""
    since = time.time() - seconds
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # deleted meanwhile
                stat = os.lstat(os.path.join(parent, name))
                total += stat.st_size if stat.st_ctime > since else 0
    return total


class Guard:
    """ASGI middleware in front of every route: 403 for a request addressed to another host (DNS
    rebinding) or sent from another origin's page, 411 for a POST without Content-Length, 413 for
    a POST larger than one upload or one that would bring the recent uploads above MAX_STORED_BYTES."""

    def __init__(self, app, port: int, upload_folder: str):
        self.app = app
        self.hosts = {f"{name}:{port}" for name in LOCAL_NAMES}
        self.origins = {f"http://{host}" for host in self.hosts}
        self.upload_folder = upload_folder

    def refusal(self, headers: Headers, method: str, path: str) -> PlainTextResponse | None:
        """The response refusing this request, or None to let it through."""
        origin = headers.get("origin")
        # Browsers send Origin with every POST and cross-origin request; a request without it comes
        # from the app's own page loads or from a program on this machine.
        if headers.get("host") not in self.hosts or (origin is not None and origin not in self.origins):
            return PlainTextResponse("Forbidden: this app answers only its own page on this machine.", 403)
        if method != "POST":
            return None
        length = headers.get("content-length", "")
        if not length.isdigit():
            return PlainTextResponse("Length required.", 411)
        if int(length) > MAX_FILE_BYTES + FORM_OVERHEAD_BYTES:
            return PlainTextResponse(f"Too large: the limit is {MAX_FILE_BYTES // 2**20} MB.", 413)
        # Only uploads store files: an analysis of a file already uploaded is never refused for space.
        stored = recent_bytes(self.upload_folder, CACHE_AGE_S + CACHE_CHECK_S)
        if path.endswith("/upload") and stored + int(length) > MAX_STORED_BYTES:
            return PlainTextResponse("Too many recent uploads: try again in a minute.", 413)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # none today in Gradio 6, but the same rule would apply
            if self.refusal(Headers(scope=scope), "GET", scope["path"]) is not None:
                await send({"type": "websocket.close", "code": 1008})
                return
        refusal = None
        if scope["type"] == "http":
            refusal = self.refusal(Headers(scope=scope), scope["method"], scope["path"])
        await (refusal or self.app)(scope, receive, send)


def build_app(predictor: Predictor) -> gr.Blocks:
    def analyse(file: dict | None):
        """The upload as Gradio sends it (its path checked to lie in the upload folder), not
        preprocessed: gr.File's preprocessing leaves an empty temporary file behind at each call."""
        table, overlay, message = predictor.diagnose(file["path"] if file else None)
        return display_table(table), overlay_html(overlay), message

    def clear():
        return pd.DataFrame(columns=COLUMNS), "", "Upload a chest X-ray to see its findings."

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(CACHE_CHECK_S, CACHE_AGE_S)) as app:
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
        overlay = gr.HTML(label=f"GradCAM, top {TOP_K} findings", show_label=False, elem_id="gradcam")
        upload.upload(analyse, inputs=upload, outputs=[findings, overlay, message], api_name="diagnose",
                      preprocess=False)
        upload.clear(clear, outputs=[findings, overlay, message], api_name=False)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default: 7860)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="model prefix, with .json and .weights.h5 beside it (default: models/densenet121_cxr14)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: choose a port from 1 to 65535.")
    try:  # before the slow model load, so that a taken port is reported at once
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind((HOST, args.port))
    except OSError as error:
        parser.exit(2, f"app.py: --port {args.port} cannot be used on {HOST}: {error.strerror}. "
                       "Stop what uses it or choose another --port.\n")
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
        app_kwargs={"middleware": [Middleware(Guard, port=args.port, upload_folder=get_upload_folder())]},
        num_workers=0,  # uploads and files are served by this process, behind the guard
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "monospace"]),
        css=CSS,
        footer_links=[],
    )


if __name__ == "__main__":
    main()
