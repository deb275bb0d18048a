"""`tfpipeline export`: a finished run -> a versioned SavedModel / .keras / TFLite / ONNX folder."""

from __future__ import annotations

import argparse

from tfpipeline.config import TTA_MODES
from tfpipeline.export.limits import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
)
from tfpipeline.flags import int_at_least


def cmd_export(args: argparse.Namespace) -> int:
    import logging

    from tfpipeline.export import export_run
    from tfpipeline.export.limits import ServingLimits

    if not args.debug:  # e.g. "Assets written to: <temporary folder>", tf2onnx's optimiser
        for noisy in ("tensorflow", "tf2onnx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    result = export_run(
        args.run,
        out=args.out,
        fmt=args.format,
        version=args.version,
        name=args.name,
        force=args.force,
        tta=args.tta,
        ood=not args.no_ood,
        limits=ServingLimits(
            max_pixels=args.max_pixels,
            max_side=args.max_side,
            max_bytes=args.max_bytes,
            max_batch=args.max_batch,
        ),
    )
    meta = result.metadata
    print(f"exported {result.format} to {result.path} ({result.size_bytes:,} bytes)")
    print(f"  classes: {', '.join(meta['class_names'])}")
    threshold = meta["threshold"]
    if threshold["value"] is not None:
        print(
            f"  decision threshold: {threshold['value']:.4f} ({threshold['policy']}) "
            f"for '{threshold['positive_class']}'"
        )
    h, w = meta["input"]["image_size"]
    print(f"  input: {h}x{w} {meta['input']['color_mode']}, scaling {meta['input']['scaling']}")
    if meta.get("tta", "none") != "none":
        print(f"  test-time augmentation in the graph: {meta['tta']}")
    if result.format == "saved_model":
        print("  signatures: serving_default (image_bytes), predict_images (float32), predict_images_uint8")
    print(f"  limits: {ServingLimits.from_json(meta['limits']).describe()}")
    ood = meta.get("ood") or {}
    if ood.get("in_graph"):
        print(
            f"  out-of-domain: {ood['method']} in the graph (outputs ood_score, in_domain; "
            f"threshold {ood['threshold']:.4g})"
        )
    else:
        print(f"  out-of-domain: not included ({ood.get('reason', 'no detector')})")
    for fmt in ("tflite", "onnx"):
        converted = meta.get(fmt)
        if converted:
            agreement = converted.get("agreement_pct")
            shown = f"{agreement:.2f}%" if agreement is not None else "not measured"
            if converted.get("near_threshold"):
                shown += (
                    f" ({converted['decisive_agreement_pct']:.2f}% clear of the tolerance; "
                    f"{converted['near_threshold']} near the threshold)"
                )
            where = (
                f" on {converted['num_images']} {converted['split']} images" if converted.get("split") else ""
            )
            print(
                f"  {fmt}: {converted['size_bytes']:,} bytes; top-class agreement with Keras {shown}{where}"
            )
    print(f"  model card: {result.path / 'README.md'}")
    return 0


def register(commands) -> None:
    """Add `export` to the top-level subparsers."""
    export = commands.add_parser(
        "export",
        help="export a run's best checkpoint for serving (SavedModel, .keras, TFLite or ONNX)",
        description="Write OUT/NAME/VERSION/ (TF Serving's layout) with the model, metadata.json and a "
        "model card README.md. The SavedModel's serving_default signature takes encoded image bytes and "
        "preprocesses them exactly as training did; predict_images takes float32 pixels.",
    )
    export.add_argument("run", metavar="RUN", help="run folder")
    export.add_argument("--out", metavar="DIR", default="exports", help="parent folder (default: exports)")
    export.add_argument(
        "--format",
        choices=("saved_model", "keras", "tflite", "onnx"),
        default="saved_model",
        help="default saved_model (for TF Serving); onnx needs `pip install tfpipeline[onnx]`",
    )
    export.add_argument(
        "--version", type=int_at_least(1), metavar="N", help="version number (default: one after the highest)"
    )
    export.add_argument("--name", help="model name in the layout (default: the run's model name)")
    export.add_argument("--force", action="store_true", help="overwrite an existing version")
    export.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation inside the exported graph (default: the run's)",
    )
    export.add_argument(
        "--no-ood",
        action="store_true",
        help="leave the run's out-of-domain detector out of the SavedModel (no ood_score / in_domain)",
    )
    limits = export.add_argument_group(
        "serving limits",
        "what the served model refuses before decoding (INVALID_ARGUMENT naming the input); "
        "recorded in metadata.json and the model card, and applied by `tfpipeline predict`",
    )
    for option, default, what in (
        ("--max-pixels", DEFAULT_MAX_PIXELS, "width x height an image may declare"),
        ("--max-side", DEFAULT_MAX_SIDE, "pixels on either side of an image"),
        ("--max-bytes", DEFAULT_MAX_BYTES, "bytes of one encoded image"),
        ("--max-batch", DEFAULT_MAX_BATCH, "images in one call of any signature"),
    ):
        limits.add_argument(
            option, type=int_at_least(1), default=default, metavar="N", help=f"{what} (default {default:,})"
        )
    export.set_defaults(func=cmd_export)
