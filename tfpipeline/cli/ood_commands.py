"""`tfpipeline ood fit|show|compare`: a run's out-of-domain detector."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfpipeline.config import OOD_METHODS
from tfpipeline.flags import int_at_least, parse_names


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1), got '{text}'") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1), got {value}")
    return value


def _methods(text: str) -> tuple[str, ...]:
    names = parse_names(text)
    unknown = [n for n in names if n not in OOD_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"methods are {', '.join(OOD_METHODS)}; got '{text}'")
    return names


def _open(run: str):
    """(context, plain model, loaded data) of a run folder."""
    from tfpipeline.data import load_data
    from tfpipeline.evaluation.run_context import load_run_model, open_run

    context = open_run(run)
    return context, load_run_model(context), load_data(context.config.data, scaling=context.scaling)


def _run_method(config) -> str:
    """The run's own `--ood` method; mahalanobis for a run trained with `--ood none`."""
    return config.train.ood if config.train.ood != "none" else "mahalanobis"


def describe(detector) -> str:
    """One paragraph about a fitted detector."""
    facts = detector.facts
    counts, seconds = facts.get("counts", {}), facts.get("seconds", {})
    lines = [
        f"method {detector.method}; threshold {detector.threshold:.6g} (in_domain = ood_score <= threshold)",
        f"accepts {100 * facts.get('val_acceptance', float('nan')):.1f}% of {counts.get('val')} validation "
        f"images (asked {100 * detector.accept:.1f}%); fitted on {counts.get('train')} training images",
        f"seconds: fit {seconds.get('fit')}, calibrate {seconds.get('calibrate')}; tta {detector.tta}",
    ]
    if facts.get("mahalanobis"):
        m = facts["mahalanobis"]
        lines.append(
            f"embedding {facts.get('embedding_layer')} ({m['dims']} dims), {m['classes']} class means, "
            f"Ledoit-Wolf shrinkage {m['shrinkage']:.4f}"
        )
        taps = detector.layout.taps if detector.layout else ()
        lines.append(
            f"feature-map taps: {', '.join(taps)}"
            if taps
            else "feature-map taps: none (fitted before there were any): refit with `tfpipeline ood fit RUN`"
        )
    return "\n".join(lines)


def cmd_ood_fit(args: argparse.Namespace) -> int:
    from tfpipeline.ood.fit import fit_run_detector

    context, model, bundle = _open(args.run)
    detector = fit_run_detector(
        context.run.path,
        model,
        context.config,
        context.scaling,
        method=args.method or _run_method(context.config),
        accept=args.accept,
        bundle=bundle,
        autoencoder_steps=args.autoencoder_steps,
    )
    print(f"wrote {context.run.path / 'ood'}:")
    print(describe(detector))
    return 0


def cmd_ood_show(args: argparse.Namespace) -> int:
    from tfpipeline.errors import UserError
    from tfpipeline.ood.store import load_detector
    from tfpipeline.training import RunFolder

    run = RunFolder.open(args.run)
    detector = load_detector(run.path)
    if detector is None:
        raise UserError(
            f"{run.path}: no out-of-domain detector; fit one with `tfpipeline ood fit {run.path}`"
        )
    print(describe(detector))
    return 0


def cmd_ood_compare(args: argparse.Namespace) -> int:
    from tfpipeline.ood.compare import compare_methods, markdown_table
    from tfpipeline.ood.images import load_images

    context, model, bundle = _open(args.run)
    sets = [load_images(folder, context.config.data, context.scaling) for folder in args.ood_data]
    rows = compare_methods(
        model,
        context.config,
        context.scaling,
        bundle,
        sets,
        methods=args.methods or OOD_METHODS,
        accept=args.accept,
        autoencoder_steps=args.autoencoder_steps,
    )
    table = markdown_table(rows)
    out = Path(args.out) if args.out else context.run.path / "evaluation" / "ood_compare"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    print(table)
    print(
        f"wrote {out / 'comparison.md'} and comparison.json (nothing in {context.run.path / 'ood'} changed)"
    )
    return 0


def register(commands) -> None:
    """Add `ood fit|show|compare` to the top-level subparsers."""
    from tfpipeline.cli import Parser, show_help

    ood = commands.add_parser(
        "ood",
        help="out-of-domain detection: fit a run's detector, show it, compare methods",
        description="A run's out-of-domain detector scores how unlike the training images an input is; "
        "its threshold accepts a share of the validation images. `train` fits one (--ood); `ood fit` "
        "(re)fits it for any run, e.g. one made before the feature.",
    )
    sub = ood.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=Parser)
    ood.set_defaults(func=show_help(ood))  # before the subcommands' own defaults, which win
    fit = sub.add_parser("fit", help="fit and calibrate a run's detector (writes RUN/ood/)")
    fit.add_argument("run", metavar="RUN", help="run folder")
    fit.add_argument("--method", choices=OOD_METHODS, help="default: the run's --ood (mahalanobis)")
    fit.add_argument("--accept", type=_share, help="share of validation images accepted (default 0.95)")
    fit.set_defaults(func=cmd_ood_fit)

    show = sub.add_parser("show", help="print a run's detector: method, threshold, counts, seconds")
    show.add_argument("run", metavar="RUN", help="run folder")
    show.set_defaults(func=cmd_ood_show)

    compare = sub.add_parser(
        "compare",
        help="fit every method and measure it against out-of-domain image sets (saves nothing in RUN/ood)",
    )
    compare.add_argument("run", metavar="RUN", help="run folder")
    compare.add_argument(
        "--ood-data",
        nargs="+",
        required=True,
        metavar="FOLDER",
        help="out-of-domain image folders (any layout), or embedded/tfds names",
    )
    compare.add_argument("--methods", type=_methods, help=f"default: {','.join(OOD_METHODS)}")
    compare.add_argument(
        "--accept", type=_share, help="share of validation images accepted (default: the run's)"
    )
    compare.add_argument("--out", metavar="DIR", help="output folder (default RUN/evaluation/ood_compare)")
    compare.set_defaults(func=cmd_ood_compare)
    for parser in (fit, compare):
        parser.add_argument(
            "--autoencoder-steps",
            type=int_at_least(1),
            default=600,
            metavar="N",
            help="optimisation steps of the autoencoder method (default 600)",
        )
