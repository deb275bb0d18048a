#!/usr/bin/env python3
"""Ablation: what each technique of a recipe is worth, one switched off at a time.

Trains the recipe as shipped (`base`), then once per technique with only that technique turned
off (the flag that turns it off is in the table), each through `tfpipeline train` in its own
process on the same folder and split, one after the other. `base` runs again at the end: the
gap between the two base runs is this machine's run-to-run noise plus drift, the yardstick for
every other row. Test-time augmentation needs no run of its own: every row reports validation
accuracy with the recipe's TTA (metrics.json) and without it (the last epoch's history).

A full-size ablation of `cifar10` costs ~25 minutes per row on 2 CPU cores, so the usual use is a
proxy: the same recipe narrower and shorter, passed after `--` to every run. Effects at proxy
scale are indicative, not the full recipe's.

    python benchmarks/ablation.py --data /scratch/cifar10/train -- --filters 32,128,128 --epochs 6
    python benchmarks/ablation.py --data DIR --only ema,label_smoothing -- --epochs 4

Prints a Markdown table, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402
from time_to_accuracy import summarise, train  # noqa: E402

# technique -> (what it is, the flags that switch it off, applies to the recipe?)
TECHNIQUES = {
    "whitening_stem": (
        "frozen patch-whitening stem",
        ["--stem", "plain"],
        lambda c: c.model.name == "fast_resnet",
    ),
    "identity_init": (
        "identity (dirac) conv init",
        ["--init", "default"],
        lambda c: c.model.name == "fast_resnet",
    ),
    "gelu": (
        "GELU (off: ReLU)",
        ["--activation", "relu"],
        lambda c: c.model.name == "fast_resnet" and c.model.activation != "relu",  # auto: GELU
    ),
    "head_scale": ("logits x 1/9 (off: x 1)", ["--head-scale", "1"], lambda c: c.model.name == "fast_resnet"),
    "nesterov": ("Nesterov momentum", ["--no-nesterov"], lambda c: c.train.nesterov),
    "weight_decay": ("decoupled weight decay", ["--weight-decay", "0"], lambda c: bool(c.train.weight_decay)),
    "onecycle": (
        "one-cycle LR (off: cosine)",
        ["--schedule", "cosine"],
        lambda c: c.train.schedule == "onecycle",
    ),
    "label_smoothing": (
        "label smoothing",
        ["--label-smoothing", "0"],
        lambda c: bool(c.train.label_smoothing),
    ),
    "norm_lr_scale": (
        "BatchNorm-offset lr scale",
        ["--norm-lr-scale", "1"],
        lambda c: c.train.norm_lr_scale != 1.0,
    ),
    "lookahead": ("lookahead (airbench)", ["--lookahead", "0"], lambda c: bool(c.train.lookahead)),
    "ema": ("EMA of weights", ["--ema", "0"], lambda c: bool(c.train.ema)),
    "augmentation": (
        "flip + shift augmentation",
        ["--no-flip", "--shift", "0"],
        lambda c: c.data.augment.flip,
    ),
}


def row(label: str, what: str, off_flags: list[str], summary: dict) -> dict:
    """One table row from a finished run's summary."""
    last = summary["curve"][-1]
    return {
        "variant": label,
        "technique": what,
        "switched_off_by": " ".join(off_flags),
        "val_accuracy_tta": round(float(summary["final_val_accuracy"]), 4),
        "val_accuracy_no_tta": last["val_accuracy"],
        "train_seconds": summary["train_seconds"],
        "run": summary["run"],
    }


def markdown(rows: list[dict], base: float) -> str:
    """The rows as a Markdown table, each with its difference to the mean of the base runs."""
    lines = [
        "| variant | switched off by | val acc (TTA) | Δ vs base | val acc (no TTA) | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        delta = r["val_accuracy_tta"] - base
        lines.append(
            f"| {r['variant']} | `{r['switched_off_by'] or '-'}` | {r['val_accuracy_tta']:.4f} | "
            f"{delta:+.4f} | {r['val_accuracy_no_tta']:.4f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="image folder (class subfolders)")
    parser.add_argument("--recipe", default="cifar10")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(TECHNIQUES)}")
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument("extra", nargs="*", help="after --: train flags added to every run (the proxy scale)")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder")

    from tfpipeline.errors import UserError
    from tfpipeline.hardware import apply_onednn_default, machine_record
    from tfpipeline.recipes import build_config

    try:
        config = build_config(args.recipe)
    except UserError as error:
        raise SystemExit(str(error)) from None
    chosen = [name for name, (_, _, applies) in TECHNIQUES.items() if applies(config)]
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(chosen))
        if unknown:
            raise SystemExit(
                f"--only {','.join(unknown)}: not techniques of recipe {args.recipe} ({', '.join(chosen)})"
            )
        chosen = [name for name in chosen if name in wanted]

    apply_onednn_default()
    import tensorflow as tf

    base_flags = ["--recipe", args.recipe, *args.extra]
    plan = [("base", "(recipe as shipped)", [])]
    plan += [(name, TECHNIQUES[name][0], TECHNIQUES[name][1]) for name in chosen]
    plan.append(("base_again", "(recipe as shipped, repeated: noise)", []))
    with tempfile.TemporaryDirectory(prefix="tfp-ablation-") as scratch:
        runs = args.keep or Path(scratch)
        runs.mkdir(parents=True, exist_ok=True)
        rows = []
        for label, what, off in plan:
            run_dir, _ = train(label, args.data, [*base_flags, *off], runs)
            rows.append(row(label, what, off, summarise(run_dir, targets=[])))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    bases = [r["val_accuracy_tta"] for r in rows if r["variant"].startswith("base")]
    base = sum(bases) / len(bases)
    print(markdown(rows, base))
    emit(
        {
            "benchmark": "ablation",
            "recipe": args.recipe,
            "proxy_flags": args.extra,
            "data": str(args.data),
            "machine": machine_record(),
            "tensorflow": tf.__version__,
            "base_mean": round(base, 4),
            "noise": round(abs(bases[0] - bases[-1]), 4),
            "rows": rows,
        }
    )


if __name__ == "__main__":
    main()
