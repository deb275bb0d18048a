"""`tfpipeline evaluate`, `compare` and `predict`."""

from __future__ import annotations

import argparse
import sys

from tfpipeline.config import TTA_MODES
from tfpipeline.errors import UserError
from tfpipeline.flags import int_at_least, parse_names


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tfpipeline.evaluation.adversarial import DEFAULT_EPSILONS
    from tfpipeline.evaluation.evaluate import evaluate_run

    result = evaluate_run(
        args.run,
        data=args.data,
        split=args.split,
        out=args.out,
        gradcam=args.gradcam,
        top_losses=args.top_losses,
        tta=args.tta,
        adversarial=(args.eps or DEFAULT_EPSILONS) if args.adversarial else (),
        groups=args.groups,
        ood_data=args.ood_data,
    )
    metrics = result.metrics
    where = f"{result.split} split of {metrics['data']} ({metrics['num_samples']} images)"
    print(f"{where}, checkpoint {metrics['checkpoint']}")
    if metrics.get("threshold") is not None:
        print(
            f"decision threshold {metrics['threshold']:.4f} for '{metrics['positive_class']}' (from the run)"
        )
    print()
    print(result.report)
    headline = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "ece")
    print("  ".join(f"{k}={metrics[k]:.4f}" for k in headline if metrics.get(k) is not None))
    for column, entry in (metrics.get("groups") or {}).items():
        if not isinstance(entry, dict):
            continue
        print(f"\nby {column}:")
        for group, row in entry["groups"].items():
            shown = "  ".join(
                f"{m}={row[m]['value']:.3f} [{row[m]['low']:.3f}, {row[m]['high']:.3f}]"
                for m in ("accuracy", "tpr", "fpr", "auc")
            )
            print(f"  {group} (n={row['support']}): {shown}")
        if entry.get("too_small"):
            print(f"  too small to measure (< 20 images or one class): {', '.join(entry['too_small'])}")
        if entry.get("largest_gap"):
            gap = entry["largest_gap"]
            print(
                f"  largest gap: {gap['metric']} {gap['gap']:.3f} ({gap['highest']} vs {gap['lowest']}); "
                f"equalised-odds difference {entry['equalized_odds_difference']:.3f}, "
                f"demographic-parity difference {entry['demographic_parity_difference']:.3f}"
            )
    if metrics.get("adversarial"):
        print("\nFGSM robustness (ε in grey levels of 255):")
        for row in metrics["adversarial"]:
            auc = f"{row['roc_auc']:.4f}" if row["roc_auc"] is not None else "–"
            print(
                f"  ε={row['grey_levels']:5.1f}  accuracy={row['accuracy']:.4f}  roc_auc={auc}  "
                f"decisions changed={row['changed']:.3f}"
            )
    print(f"\nwrote to {result.out_dir}:")
    for path in result.files.values():
        print(f"  {path.name}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tfpipeline.evaluation.compare import compare_runs

    comparison = compare_runs(args.runs, labels=args.labels, out=args.out, metrics=args.metrics)
    print(comparison.markdown)
    print(f"wrote to {comparison.out_dir}:")
    for path in comparison.files.values():
        print(f"  {path.name}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tfpipeline.evaluation.predict import (
        collect_inputs,
        load_predictor,
        predict_paths,
        register_loader,
        submission_rows,
        write_submission,
    )
    from tfpipeline.export import is_export, load_export

    # The export stage is downstream of evaluation, so the CLI (which sees every stage) teaches
    # predict to read export folders as well as run folders.
    register_loader(is_export, load_export)
    paths = collect_inputs(args.inputs)
    if args.csv:  # fail on colliding IDs before loading anything
        submission_rows(paths, [0] * len(paths), ["?"], "index", args.id_format)
    predictor = load_predictor(args.model, args.tta)
    found = predict_paths(predictor, paths, batch_size=args.batch_size, skip_bad=args.skip_bad)
    files, probs, skipped, scores = found.files, found.probs, found.skipped, found.ood_scores
    labels = predictor.rule.predict(probs)
    if args.ood_columns and scores is None:
        raise UserError(
            f"{args.model}: no out-of-domain detector, so no OOD columns "
            "(fit one with `tfpipeline ood fit RUN`, and export again for an export)"
        )
    if args.csv:
        extra = None
        if args.ood_columns:
            extra = [(f"{s:.6g}", str(int(ok))) for s, ok in zip(scores, found.in_domain, strict=True)]
        rows = submission_rows(files, labels, predictor.class_names, args.label_format, args.id_format, extra)
        out = write_submission(args.csv, rows, ("OOD_SCORE", "IN_DOMAIN") if extra else ())
        print(
            f"wrote {len(rows)} prediction(s) to {out}"
            + (f"; skipped {len(skipped)} bad file(s)" if skipped else "")
        )
        return 0
    for i, (path, label, row) in enumerate(zip(files, labels, probs, strict=True)):
        line = f"{path}\t{predictor.class_names[label]}\t{row[label]:.4f}"
        if scores is not None:  # ood_score, then in_domain / out_of_domain
            line += f"\t{scores[i]:.4f}\t{'in_domain' if found.in_domain[i] else 'out_of_domain'}"
        print(line)
    if scores is not None:
        print(
            f"{int((~found.in_domain).sum())} of {len(files)} image(s) out of domain "
            f"(ood_score > {found.ood_threshold:.4g})",
            file=sys.stderr,
        )
    sys.stdout.flush()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from tfpipeline.evaluation.explain import explain_run

    result = explain_run(
        args.run,
        layers=args.layers or (),
        images=args.images,
        channels=args.channels,
        top=args.top,
        out=args.out,
    )
    print(f"layers: {', '.join(result.layers)}")
    print(f"wrote to {result.out_dir}:")
    for path in result.files.values():
        print(f"  {path.name}")
    return 0


def _epsilons(text: str):
    from tfpipeline.evaluation.adversarial import parse_epsilons

    try:
        return parse_epsilons(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands) -> None:
    """Add `evaluate`, `compare` and `predict` to the top-level subparsers."""
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a run's best checkpoint: report, metrics, figures, Grad-CAM, summary",
        description="Rebuild a run's data exactly as training did and evaluate its best checkpoint on one "
        "split, with the run's own decision threshold. Writes RUN/evaluation/<split>/ (or --out).",
    )
    evaluate.add_argument("run", metavar="RUN", help="run folder")
    evaluate.add_argument(
        "--data",
        help="evaluate on this data instead of the run's (same classes), e.g. an out-of-domain folder",
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        help="default: the run's test split (val when it has none); for --data, all (every image, unsplit)",
    )
    evaluate.add_argument("--out", metavar="DIR", help="output folder (default RUN/evaluation/<split>)")
    evaluate.add_argument(
        "--gradcam", type=int_at_least(0), default=8, metavar="N", help="Grad-CAM images (default 8; 0: none)"
    )
    evaluate.add_argument(
        "--top-losses",
        type=int_at_least(0),
        default=9,
        metavar="N",
        help="most confidently wrong images (default 9; 0: none)",
    )
    evaluate.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the run's own)")
    evaluate.add_argument(
        "--groups",
        metavar="FILE.csv",
        help="per-group report: a CSV with a path column and one or more group columns",
    )
    evaluate.add_argument(
        "--ood-data",
        metavar="FOLDER",
        help="out-of-domain images (any layout; or embedded/tfds name): the run's detector's AUROC and "
        "false-acceptance rate against the evaluated split, with a score histogram",
    )
    evaluate.add_argument(
        "--adversarial",
        choices=("fgsm",),
        help="robustness report: accuracy and AUC under the fast gradient sign attack at each --eps",
    )
    evaluate.add_argument(
        "--eps",
        type=_epsilons,
        help="FGSM steps as shares of the pixel range (default 1/255,2/255,4/255,8/255)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    explain = commands.add_parser(
        "explain",
        help="what each layer learned: first-layer filters, feature maps, most-activating images",
        description="Write RUN/explain/: filters.png (first convolution), feature_maps_<layer>.png (each "
        "convolution's first channels for a few validation images) and top_images.png (the validation "
        "images that activate the deepest convolution's most varying channels most).",
    )
    explain.add_argument("run", metavar="RUN", help="run folder")
    explain.add_argument("--layers", type=parse_names, help="convolutions to show (default: every one)")
    explain.add_argument("--images", type=int_at_least(1), default=3, help="images in feature-map figures")
    explain.add_argument("--channels", type=int_at_least(1), default=8, help="channels shown per layer")
    explain.add_argument(
        "--top", type=int_at_least(1), default=6, help="images per channel in top_images.png"
    )
    explain.add_argument("--out", metavar="DIR", help="output folder (default RUN/explain)")
    explain.set_defaults(func=cmd_explain)

    compare = commands.add_parser(
        "compare",
        help="overlay learning curves of several runs and tabulate their results",
        description="One figure per metric with every run's train (dashed) and val (solid) curves, plus "
        "comparison.md / comparison.csv with one row per run.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    compare.add_argument("--labels", type=parse_names, help="comma-separated legend labels, one per run")
    compare.add_argument("--out", metavar="DIR", help="output folder (default: ./comparison)")
    compare.add_argument(
        "--metrics", type=parse_names, help="history metrics to plot (default loss,accuracy,auc,...)"
    )
    compare.set_defaults(func=cmd_compare)

    predict = commands.add_parser(
        "predict",
        help="predict classes of image files with a run's model",
        description="Preprocess each image exactly as training did and predict its class. Prints "
        "path<TAB>class<TAB>probability (plus <TAB>ood_score<TAB>in_domain|out_of_domain when the model "
        "has an out-of-domain detector), or writes a Kaggle-style ID,TARGET CSV with --csv.",
    )
    predict.add_argument(
        "model", metavar="MODEL_OR_RUN", help="run folder, or an export folder from `tfpipeline export`"
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)"
    )
    predict.add_argument(
        "--csv", metavar="FILE", help="write ID,TARGET rows (ID = file name without extension)"
    )
    predict.add_argument(
        "--label-format",
        choices=("index", "name"),
        default="index",
        help="CSV TARGET: class index (default) or name",
    )
    predict.add_argument(
        "--id-format",
        choices=("auto", "int", "stem"),
        default="auto",
        help="CSV ID: integers when every file name is one (auto, default: 00042.jpg -> 42), int, "
        "or the file name without extension as it is (stem: 00042)",
    )
    predict.add_argument(
        "--batch-size", type=int_at_least(1), default=32, help="images per batch (default 32)"
    )
    predict.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    predict.add_argument(
        "--ood-columns",
        action="store_true",
        help="--csv: add OOD_SCORE and IN_DOMAIN (1/0) columns (needs a run or export with a detector)",
    )
    predict.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the run's own)")
    predict.set_defaults(func=cmd_predict)
