"""The model card (`README.md` in the export's version folder), written from `metadata.json`.

Everything it states comes from the metadata, so the card always matches the exported model:
classes, data counts, the run's metric values with the split they come from, the decision
threshold, and how to call the model (TF Serving REST and gRPC, or the keras/tflite file).
"""

from __future__ import annotations

from typing import Any

HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "ece")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    splits = [s for s in ("val", "test") if metrics.get(s)]
    if not splits:
        return ["No evaluation metrics were recorded for this run (metrics.json missing)."]
    names = [m for m in HEADLINE if any(metrics[s].get(m) is not None for s in splits)]
    lines = ["| split | images | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for split in splits:
        values = metrics[split]
        cells = " | ".join(_fmt(values.get(m)) for m in names)
        lines.append(f"| {split} | {values.get('num_samples', 'n/a')} | {cells} |")
    return lines


def _counts_table(counts: dict[str, dict[str, int]] | None, class_names: list[str]) -> list[str]:
    if not counts:
        return ["Per-split counts were not recorded."]
    lines = ["| split | " + " | ".join(class_names) + " | total |", "|---|" + "---|" * (len(class_names) + 1)]
    for split, per_class in counts.items():
        row = [int(per_class.get(c, 0)) for c in class_names]
        lines.append(f"| {split} | " + " | ".join(str(n) for n in row) + f" | {sum(row)} |")
    return lines


def _total_images(counts: dict[str, dict[str, int]] | None) -> int:
    return sum(sum(per_class.values()) for per_class in (counts or {}).values())


def _usage(meta: dict[str, Any]) -> list[str]:
    name, fmt = meta["name"], meta["format"]
    h, w = meta["input"]["image_size"]
    c = meta["input"]["channels"]
    outputs = "`probabilities` [N, K] (class order above), `class_index`, `class_name`"
    if meta["num_classes"] == 2:
        outputs += ", `score` (probability of the positive class) and `decision` (score >= threshold)"
    if (meta.get("ood") or {}).get("in_graph"):
        outputs += ", `ood_score` and `in_domain` (see Out-of-domain inputs)"
    if fmt == "keras":
        return [
            "`model.keras` takes float32 pixels [N, "
            f"{h}, {w}, {c}] already resized as described above and scaled with "
            f"`{meta['input']['scaling']}` (see `metadata.json`). Load it with "
            "`keras.models.load_model('model.keras')` (import `tfpipeline.models` first so its "
            "custom layers are registered). A binary model outputs one sigmoid unit scoring the "
            "positive class.",
        ]
    if fmt == "onnx":
        return [
            f"`model.onnx` (opset {meta['onnx']['opset']}) takes `images` float32 [N, {h}, {w}, {c}] "
            "in 0..255, resized as described above; scaling is inside the model. Its one output is "
            "`probabilities` [N, K] in class order. Run it with onnxruntime "
            "(`InferenceSession('model.onnx').run(['probabilities'], {'images': x})`).",
        ]
    if fmt == "tflite":
        return [
            f"`model.tflite` takes float32 pixels [1, {h}, {w}, {c}] in 0..255, resized as described "
            "above; scaling is inside the model. Its one output is `probabilities` [1, K] in class "
            "order. Run it with `tf.lite.Interpreter(model_path='model.tflite')` (or LiteRT).",
        ]
    return [
        "Signatures (`saved_model_cli show --all --dir .` lists them):",
        "",
        "- `serving_default`: `image_bytes` string [N], encoded JPEG/PNG/BMP/GIF files (GIFs: the "
        "first frame). Decoding, resizing and scaling happen inside the model, exactly as in "
        "training. A payload that is not an image fails with INVALID_ARGUMENT "
        '"input image_bytes[i] is not a decodable image"; one beyond the limits below, with a '
        "message naming the input, its size and the limit.",
        f"- `predict_images`: `images` float32 [N, {h}, {w}, {c}], pixels 0..255 already resized.",
        f"- `predict_images_uint8`: `images` uint8 [N, {h}, {w}, {c}], same.",
        "",
        f"Every signature returns {outputs}.",
        "",
        "Serve this folder's parent with TF Serving (it picks the highest version):",
        "",
        "```sh",
        f'docker run -p 8501:8501 -p 8500:8500 -v "$PWD/..:/models/{name}" -e MODEL_NAME={name} '
        "tensorflow/serving",
        "```",
        "",
        "REST (`POST /v1/models/{name}:predict`), one `b64` object per image:".replace("{name}", name),
        "",
        "```sh",
        "python - <<'EOF'",
        "import base64, json, urllib.request",
        'body = {"signature_name": "serving_default",',
        '        "instances": [{"b64": base64.b64encode(open("image.jpg", "rb").read()).decode()}]}',
        f'request = urllib.request.Request("http://localhost:8501/v1/models/{name}:predict",',
        '                                 data=json.dumps(body).encode(), method="POST")',
        'print(json.load(urllib.request.urlopen(request))["predictions"])',
        "EOF",
        "```",
        "",
        'The JSON body is `{"signature_name": "serving_default", "instances": [{"b64": "..."}]}`.',
        "",
        "gRPC (`pip install tensorflow-serving-api grpcio`):",
        "",
        "```python",
        "import grpc, tensorflow as tf",
        "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc",
        "",
        'stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))',
        "request = predict_pb2.PredictRequest()",
        f'request.model_spec.name = "{name}"',
        'request.model_spec.signature_name = "serving_default"',
        'image = open("image.jpg", "rb").read()',
        'request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))',
        "response = stub.Predict(request, timeout=10.0)",
        'print(tf.make_ndarray(response.outputs["probabilities"]))',
        "```",
        "",
        "Without a server (only TensorFlow needed):",
        "",
        "```python",
        "import tensorflow as tf",
        'model = tf.saved_model.load(".")',
        'image = open("image.jpg", "rb").read()',
        'out = model.signatures["serving_default"](image_bytes=tf.constant([image]))',
        'print(out["probabilities"].numpy(), out["class_name"].numpy())',
        "```",
    ]


def _limits(meta: dict[str, Any]) -> list[str]:
    """The "Serving limits" section: what the model refuses, and how to raise it."""
    limits = meta.get("limits")
    if not limits:
        return ["This export records no limits (it predates them): its graph decodes whatever it is sent."]
    where = (
        "The SavedModel refuses, inside its graph and before decoding anything"
        if meta["format"] == "saved_model"
        else f"`model.{meta['format']}` takes pixels, so these apply where tfpipeline decodes for it "
        "(`tfpipeline predict`, `load_export`), which refuses"
    )
    return [
        f"{where}, with INVALID_ARGUMENT naming the input, its size and the limit:",
        "",
        "| limit | value | refuses |",
        "|---|---|---|",
        f"| `max_pixels` | {limits['max_pixels']:,} | an image declaring more pixels (width x height) |",
        f"| `max_side` | {limits['max_side']:,} | an image wider or taller than this |",
        f"| `max_bytes` | {limits['max_bytes']:,} | an encoded image longer than this |",
        f"| `max_batch` | {limits['max_batch']:,} | a call with more images (every signature) |",
        "",
        "Dimensions are read from the header bytes (JPEG frame header, PNG IHDR, GIF screen and "
        "first-frame descriptors, BMP info header), so a decompression bomb is refused in "
        "milliseconds instead of being decoded into gigabytes. A refused call fails as a whole; the "
        "model keeps serving other calls. "
        "To serve larger images, export again with higher limits: `tfpipeline export RUN "
        "--max-pixels N --max-side N --max-bytes N --max-batch N`.",
    ]


def _ood(meta: dict[str, Any]) -> list[str]:
    """The "Out-of-domain inputs" section, from metadata.json `ood`."""
    ood = meta.get("ood")
    if not ood:
        return ["This export predates out-of-domain detection: it answers every input with a class."]
    if not ood.get("method"):
        return [f"No out-of-domain detector: {ood['reason']}. The model answers every input with a class."]
    counts = ood.get("counts") or {}
    fitted = (
        f"A `{ood['method']}` detector was fitted on the {counts.get('train', '?')} training images and its "
        f"threshold `{ood['threshold']:.6g}` calibrated to accept {100 * ood['accept']:.0f}% of the "
        f"{counts.get('val', '?')} validation images (it accepted "
        f"{100 * (ood.get('val_acceptance') or 0):.1f}%)."
    )
    if not ood["in_graph"]:
        return [fitted, "", f"This export leaves it out: {ood['reason']}."]
    return [
        fitted,
        "",
        "Every signature also returns `ood_score` (float32 [N]; higher means less like the training "
        "images) and `in_domain` (bool [N]: `ood_score <= threshold`), computed inside the graph from "
        "the same forward pass as the probabilities. Treat the class of an input with `in_domain` "
        "false as meaningless: the model was never shown such images. Out-of-domain detection misses "
        "inputs that look like the training data yet differ in what matters (another generator, "
        "another camera), so it complements rather than replaces evaluation on your own data.",
    ]


def render_model_card(meta: dict[str, Any]) -> str:
    """Markdown model card for the export described by `meta` (see :mod:`.metadata`)."""
    classes = meta["class_names"]
    inp, data, metrics, threshold = meta["input"], meta["data"], meta["metrics"], meta["threshold"]
    h, w = inp["image_size"]
    total = _total_images(data.get("counts"))
    binary = meta["num_classes"] == 2
    test_or_val = "test" if metrics.get("test") else "val"

    lines = [f"# {meta['name']} (version {meta['version']}): {' vs '.join(classes)} image classifier", ""]
    lines += [
        f"Exported {meta['created']} by tfpipeline {meta['versions']['tfpipeline']} "
        f"(TensorFlow {meta['versions']['tensorflow']}, Keras {meta['versions']['keras']}) from run "
        f"`{meta['run']['path']}` (checkpoint `{meta['run']['checkpoint']}`), format `{meta['format']}`.",
        "",
        "## What it detects",
        "",
    ]
    if binary:
        negative = classes[1 - meta["positive_index"]]
        lines.append(
            f"A binary classifier: it scores how likely an image shows **{meta['positive_class']}** "
            f"(the positive class) rather than **{negative}**, and decides '{meta['positive_class']}' "
            f"when that probability is at least {_fmt(threshold['value'])}."
        )
    else:
        lines.append(f"A {meta['num_classes']}-class classifier over: {', '.join(classes)}.")
    lines += [
        "",
        f"Model `{meta['model']['name']}`; input {h}x{w} {inp['color_mode']} "
        f"({inp['channels']} channel(s)), resized with `{inp['resize']}` / `{inp['interpolation']}` "
        f"interpolation, pixels scaled `{inp['scaling']}`.",
        "",
        "## Training data",
        "",
        f"Source: {data.get('source') or 'unknown'} `{data.get('location')}`, {total} images in total. "
        f"Data fingerprint (sha256 over {data['fingerprint']['over']}): `{data['fingerprint']['sha256']}`.",
        "",
        *_counts_table(data.get("counts"), classes),
        "",
        "## Metrics",
        "",
        "Computed by `tfpipeline train` with the best checkpoint; `val` chose the checkpoint (and the "
        "threshold when it is tuned), `test` is held out and was not used for any choice.",
        "",
        *_metrics_table(metrics),
        "",
    ]
    if metrics.get("train"):
        train = metrics["train"]
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in train.items() if k != "epoch")
        lines += [f"Training split at the best epoch ({train['epoch']}): {shown}.", ""]
    for fmt, label in (("tflite", "TFLite"), ("onnx", "ONNX")):
        if meta.get(fmt):
            converted = meta[fmt]
            lines += [
                f"{label} conversion: {converted['size_bytes']} bytes; agrees with the Keras model on "
                f"the top class for {_fmt(converted['agreement_pct'])}% of {converted['num_images']} "
                f"held-out ({converted['split']}) images" + _near_threshold_note(converted) + ".",
                "",
            ]
    lines += ["## Decision threshold", ""]
    if binary:
        lines.append(
            f"`{_fmt(threshold['value'])}` on the probability of '{meta['positive_class']}', policy "
            f"`{threshold['policy']}` (a number: fixed; `prior`: the training share of the positive "
            "class; `tuned`: maximises F1 on val). The `decision` and `class_index` outputs apply it; "
            "pick your own threshold from `score` when the costs of the two errors differ."
        )
    else:
        lines.append("None: the predicted class is the most probable one (argmax).")
    lines += [
        "",
        "## Intended use",
        "",
        f"Triage or decision support for images like the training data ({', '.join(classes)}), with "
        "a human reviewing consequential decisions. Not intended for use on other kinds of images, "
        "for identifying individuals, or as the sole basis of decisions about people.",
        "",
        "## Limitations and known failure modes",
        "",
        f"- Trained on {total} images from a single source (`{data.get('location')}`); performance on "
        "images from other cameras, sites, compressions or time periods (distribution shift) is "
        "unknown and usually lower. Re-evaluate on your own data before relying on it.",
        f"- Every image is resized to {h}x{w} (`{inp['resize']}`): fine detail is lost, and very "
        "different input resolutions or aspect ratios than in training change the results.",
        f"- Metrics come from {metrics.get(test_or_val, {}).get('num_samples', 'few')} {test_or_val} images; "
        "small evaluation sets give wide confidence intervals.",
        "- Probabilities may be miscalibrated (see `ece` above); the model gives a confident answer "
        "even for images of none of its classes (out-of-distribution inputs)"
        + ("; check `in_domain`." if (meta.get("ood") or {}).get("in_graph") else "."),
        "- Detectors of manipulated or synthetic images (e.g. deepfakes) do not generalise reliably "
        "to generators, editing tools or post-processing not seen in training, and can be evaded by "
        "adversarial perturbations; treat a negative result as 'not detected', not 'authentic'.",
        "",
        "## Bias and fairness",
        "",
        "The demographic coverage of the training data (age, gender, skin tone, ...) is unknown and "
        "was not measured; error rates may differ across subgroups. Before use on images of people, "
        "evaluate per subgroup (`tfpipeline evaluate` on a labelled subgroup folder) and compare "
        "false positive and false negative rates.",
        "",
        "## Out-of-domain inputs",
        "",
        *_ood(meta),
        "",
        "## How to call it",
        "",
        *_usage(meta),
        "",
        "## Serving limits",
        "",
        *_limits(meta),
        "",
    ]
    return "\n".join(lines)


def _near_threshold_note(converted: dict) -> str:
    """Say how decisions within the float tolerance were counted, when there were any."""
    near = converted.get("near_threshold")
    if not near:
        return ""
    return (
        f" ({_fmt(converted.get('decisive_agreement_pct'))}% of those whose decision is clear of the "
        f"{converted['tolerance']:g} float tolerance; {near} lie within it and may flip between runtimes)"
    )
