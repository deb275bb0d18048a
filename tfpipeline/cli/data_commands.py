"""`tfpipeline data check|explore|split|extract|synth-fakes` and `tfpipeline cache`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfpipeline.errors import UserError
from tfpipeline.flags import (
    add_data_flags,
    data_config_from_args,
    parse_floats,
    parse_image_size,
    parse_names,
)

EXIT_DATA_PROBLEMS = 1


def cmd_check(args: argparse.Namespace) -> int:
    from tfpipeline.data import check_source, resolve_source

    config = data_config_from_args(args, args.data)
    source = resolve_source(config)
    report = check_source(source, config)
    if report is None:
        count = sum(len(s) for s in source.splits.values())
        print(f"{config.data}: in-memory data ({count} images), nothing to check")
        return 0
    print(report.format())
    for path in source.ignored_files:
        print(f"  ignored (unsupported extension): {path}")
    return EXIT_DATA_PROBLEMS if report.bad_paths else 0


def cmd_explore(args: argparse.Namespace) -> int:
    from tfpipeline.data import resolve_source
    from tfpipeline.data.explore import explore

    config = data_config_from_args(args, args.data)
    report = explore(resolve_source(config), config, args.out)
    print(report["table"])
    print()
    print(f"imbalance ratio (train): {report['imbalance_ratio']}")
    if report["positive_class"] is not None:
        print(f"positive class: {report['positive_class']}  prior (train share): {report['positive_prior']}")
    print(f"image sizes: {report['distinct_image_sizes']} distinct; most common: {report['image_sizes']}")
    print(f"modes: {report['modes']}")
    print(f"channel mean {report['channel_mean']}  std {report['channel_std']}")
    print(
        f"exact duplicates within splits: {len(report['duplicates_within_splits'])} group(s); "
        f"leakage across splits: {len(report['leakage_across_splits'])} group(s)"
    )
    for group in report["leakage_across_splits"][:10]:
        print(f"  leak: {' = '.join(group)}")
    if report["bad_files"]:
        shown = ", ".join(report["bad_files"][:10]) + (", ..." if len(report["bad_files"]) > 10 else "")
        print(f"bad files: {len(report['bad_files'])} (run `tfpipeline data check` for details): {shown}")
    if report["unusual_files"]:
        print("unusual files: " + ", ".join(f"{k} x{v}" for k, v in sorted(report["unusual_files"].items())))
    if args.out:
        print(f"report written to {Path(args.out) / 'report.md'}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from tfpipeline.data import resolve_source
    from tfpipeline.data.materialize import materialize_split

    config = data_config_from_args(args, args.src)
    source = resolve_source(config)
    if source.kind == "folder":
        raise UserError(f"data split: {args.src} is already split into train/val folders")
    written = materialize_split(source, args.out, link=args.link)
    print(f"wrote {json.dumps(written)} to {args.out} ({'symlinks' if args.link else 'copies'})")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from tfpipeline.data.archive import extract_archive

    done = extract_archive(args.archive, args.out, per_folder=args.per_folder)
    verb = "already extracted" if done.reused else "extracted"
    sample = f" (first {args.per_folder} per folder)" if args.per_folder else ""
    print(
        f"{verb}: {done.files:,} files{sample} from {args.archive} into {', '.join(map(str, done.folders))}"
    )
    if done.skipped:
        print(f"skipped {len(done.skipped)} link or special member(s), e.g. {done.skipped[0]}")
    return 0


def cmd_synth_fakes(args: argparse.Namespace) -> int:
    from tfpipeline.data.forgeries import write_synthetic_pairs

    made = write_synthetic_pairs(args.reals, args.out, kind=args.kind, size=args.image_size, seed=args.seed)
    print(
        f"wrote {made['pairs']} real/fake pairs ({made['kind']}-blended, "
        f"{made['size'][0]}x{made['size'][1]}, {made['changed_pixel_share']:.1%} of pixels changed on "
        f"average) to {args.out}; score a run on them with "
        f"`tfpipeline evaluate RUN --split all --data {args.out}`"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from tfpipeline.data import cache_housekeeping, pixel_cache

    if args.action == "clear":
        freed = cache_housekeeping.clear()
        print(f"cleared {pixel_cache.cache_root()}: freed {freed / 1e6:,.1f} MB")
        return 0
    found = cache_housekeeping.info()
    state = "on" if pixel_cache.enabled() else f"off ({pixel_cache.ENABLE_ENV}=0)"
    print(f"pixel cache: {found.root} ({state})")
    print(f"size: {found.total_bytes / 1e6:,.1f} MB of at most {found.limit_bytes / 1e9:g} GB")
    for entry in found.settings:
        settings = entry["settings"]
        size = "x".join(str(v) for v in settings.get("size", ())) or "?"
        described = f"{size}, {settings.get('channels', '?')} channel(s), {settings.get('resize', '?')}"
        print(
            f"  {entry['key']}: {described}: {entry['images']} images in {entry['chunks']} chunk(s), "
            f"{entry['bytes'] / 1e6:,.1f} MB"
        )
    return 0


def register(commands) -> None:
    """Add the `data` command group to the top-level subparsers."""
    from tfpipeline.cli import Parser, show_help

    data = commands.add_parser("data", help="check, explore and split datasets")
    sub = data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=Parser)
    data.set_defaults(func=show_help(data))

    check = sub.add_parser("check", help="decode every file; list bad and unusual ones (exit 1 if bad)")
    check.add_argument("data", help="image folder, tfds:NAME, faces or digits")
    add_data_flags(check, with_data=False)
    check.set_defaults(func=cmd_check)

    explore = sub.add_parser("explore", help="counts, prior, sizes, duplicates, leakage, sample grids")
    explore.add_argument("data", help="image folder, tfds:NAME, faces or digits")
    explore.add_argument("--out", help="write report.md, report.json and sample grids here")
    add_data_flags(explore, with_data=False)
    explore.set_defaults(func=cmd_explore)

    split = sub.add_parser("split", help="write a stratified train/val/test folder layout")
    split.add_argument(
        "src", help="folder with one subfolder per class, or faces/digits/tfds:NAME (written as PNG files)"
    )
    split.add_argument("out", help="new folder to create")
    split.add_argument("--ratios", dest="split_ratios", type=parse_floats, help="default 0.75,0.125,0.125")
    split.add_argument("--seed", type=int, help="default 101")
    split.add_argument(
        "--classes", type=parse_names, help="comma-separated classes to include (default: all)"
    )
    split.add_argument("--link", action="store_true", help="symlink instead of copying")
    split.set_defaults(func=cmd_split)

    extract = sub.add_parser(
        "extract",
        help="unpack an image archive (tar, tar.gz, zip) into a folder, safely and once",
        description="Members that would land outside OUT are refused; links and devices are skipped. "
        "Extracting the same archive again into the same folder is a no-op.",
    )
    extract.add_argument("archive", help="a .tar, .tar.gz, .tgz or .zip file")
    extract.add_argument("out", help="destination folder (created if needed)")
    extract.add_argument(
        "--per-folder", type=int, help="keep only the first N files (by name) of each folder, for quick runs"
    )
    extract.set_defaults(func=cmd_extract)

    synth = sub.add_parser(
        "synth-fakes",
        help="an out-of-domain test set: every real face of a folder and its self-blended forged twin",
        description="Writes OUT/real/NAME.png and OUT/fake/NAME.png for every image of REALS (give reals "
        "the model never trained on, e.g. a held-out split's), both resized and re-encoded alike. Score a "
        "run with `tfpipeline evaluate RUN --split all --data OUT`. For a model trained with --synth-fakes "
        "these forgeries are in-domain.",
    )
    synth.add_argument("reals", help="folder of real face images")
    synth.add_argument("out", help="new (or empty) folder to write")
    synth.add_argument(
        "--kind",
        choices=("self", "other"),
        default="self",
        help="self: a transformed copy of the same face blended into a region (default); "
        "other: a colour-matched region of another face of the folder",
    )
    synth.add_argument(
        "--image-size", type=parse_image_size, default=(256, 256), help="SIZE or HEIGHTxWIDTH (default 256)"
    )
    synth.add_argument(
        "--seed", type=int, default=101, help="the same seed writes the same files (default 101)"
    )
    synth.set_defaults(func=cmd_synth_fakes)

    cache = commands.add_parser(
        "cache",
        help="the persistent pixel cache: `cache info` (what it holds), `cache clear` (delete it)",
        description="Decoded, resized pixels are kept on disk between runs (in $TFPIPELINE_CACHE_DIR/pixels, "
        "default ~/.cache/tfpipeline/pixels), keyed by file path, size and modification time and by the "
        "decode settings. Bounded by $TFPIPELINE_PIXEL_CACHE_GB (default 20); TFPIPELINE_PIXEL_CACHE=0 "
        "turns it off.",
    )
    cache.add_argument("action", choices=("info", "clear"))
    cache.set_defaults(func=cmd_cache)
