"""`tfpipeline data explore`: describe a dataset before training on it.

Counts per split and class, imbalance, the positive-class prior (the assessment's decision
threshold), image sizes and modes, per-channel statistics, exact duplicates and cross-split
leakage by content hash, and a 3x3 sample grid per class.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from tfpipeline.config import DataConfig
from tfpipeline.data import check_source, resolve_positive
from tfpipeline.data.pipeline import decoded_images
from tfpipeline.data.split import DataSource, Split


def count_table(source: DataSource) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals."""
    table = pd.DataFrame(
        {
            name: np.bincount(split.labels, minlength=len(source.class_names))
            for name, split in source.splits.items()
        },
        index=pd.Index(source.class_names, name="class"),
    )
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table


def content_hashes(split: Split) -> list[str | None]:
    """SHA-256 of each example's bytes: the encoded file (None if unreadable), or the pixels."""
    if split.from_files:
        return [_file_hash(p) for p in split.paths]
    images = split.images if split.images is not None else (x for x, _ in split.dataset.as_numpy_iterator())
    return [hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images]


def _file_hash(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None  # reported by the file check instead


def example_names(split: Split, split_name: str) -> list[str]:
    return list(split.paths) if split.from_files else [f"{split_name}[{i}]" for i in range(len(split))]


def find_duplicates(source: DataSource) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of identical examples within a split, and groups that span splits (leakage)."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, split in source.splits.items():
        for digest, example in zip(content_hashes(split), example_names(split, name), strict=True):
            if digest is not None:
                groups[digest].append((name, example))
    within, across = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        target = across if len({split for split, _ in members}) > 1 else within
        target.append([f"{split}: {example}" for split, example in members])
    return within, across


def header_stats(split: Split) -> tuple[Counter, Counter]:
    """Distribution of (width x height) and colour mode, read from headers only."""
    sizes, modes = Counter(), Counter()
    if split.from_files:
        for path in split.paths:
            try:
                with Image.open(path) as image:
                    sizes[f"{image.width}x{image.height}"] += 1
                    modes[f"{image.format} {image.mode}"] += 1
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
                modes["unreadable"] += 1
    elif split.images is not None:
        height, width, channels = split.images.shape[1:]
        sizes[f"{width}x{height}"] += len(split)
        modes[f"array {'L' if channels == 1 else 'RGB'}"] += len(split)
    else:
        for image, _ in split.dataset.as_numpy_iterator():
            sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
            modes[f"array {'L' if image.shape[-1] == 1 else 'RGB'}"] += 1
    return sizes, modes


def channel_stats(split: Split, config: DataConfig) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] over the split as the pipeline decodes it."""
    total = total_sq = None
    pixels = 0
    for images, _ in decoded_images(split, config).batch(64).as_numpy_iterator():
        values = images.astype(np.float64).reshape(-1, images.shape[-1]) / 255.0
        total = values.sum(0) if total is None else total + values.sum(0)
        total_sq = (values**2).sum(0) if total_sq is None else total_sq + (values**2).sum(0)
        pixels += values.shape[0]
    if not pixels:
        return [], []
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def sample_grid(
    images: np.ndarray | list[np.ndarray], title: str, ncols: int = 3, captions: list[str] | None = None
) -> Figure:
    """A grid of up to ncols x ncols uint8 images with a title (the assessment's figure 1).

    Args:
        images: [N, H, W, C] uint8 (C = 1 shows in grey).
        title: the figure title (name the class in it).
        captions: optional text under each image, e.g. its file name.
    """
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig = Figure(figsize=(2.4 * ncols, 2.6 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (ax, image) in enumerate(zip(axes.flat, images, strict=False)):
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
        if captions:
            ax.set_title(_shorten(captions[i], 30), fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    return fig


def class_overview(images_by_class: dict[str, np.ndarray], title: str, per_row: int = 8) -> Figure:
    """One row of up to `per_row` uint8 images per class, the class name at the left: the
    whole dataset at a glance (the per-class grids show more of each class, with file names)."""
    nrows = max(1, len(images_by_class))
    fig = Figure(figsize=(0.9 * per_row + 1.2, 0.95 * nrows + 0.6))
    axes = fig.subplots(nrows, per_row, squeeze=False)
    for row, (name, images) in zip(axes, images_by_class.items(), strict=False):
        for ax, image in zip(row, images[:per_row], strict=False):
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        row[0].set_ylabel(_shorten(name, 16), rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    return fig


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def explore(source: DataSource, config: DataConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compute the report; with `out_dir`, write report.md, report.json and sample grids.

    Returns:
        The report as a JSON-friendly dict (`table` holds the count table as text).
    """
    table = count_table(source)
    train_counts = np.bincount(source.splits["train"].labels, minlength=len(source.class_names))
    positive_class, positive_index = resolve_positive(source.class_names, config.positive_class)
    within, across = find_duplicates(source)
    # Bad files are reported, then left out of the pixel statistics and sample grids. Exploring
    # trains nothing, so the check does not fill the pixel cache (50,000 images at 224 px would
    # hold 7.5 GB in memory for nothing).
    check = check_source(source, replace(config, cache="none"))
    bad = check.bad_paths if check else set()
    usable = {
        name: split.subset(np.array([p not in bad for p in split.paths])) if bad else split
        for name, split in source.splits.items()
    }
    sizes, modes = Counter(), Counter()
    for split in source.splits.values():
        split_sizes, split_modes = header_stats(split)
        sizes.update(split_sizes)
        modes.update(split_modes)
    # Statistics on a small decode size: means and stds barely depend on resolution.
    stats_config = replace(config, image_size=(64, 64), resize="stretch")
    mean, std = channel_stats(usable["train"], stats_config)
    report: dict[str, Any] = {
        "data": source.location,
        "layout": source.kind,
        "classes": list(source.class_names),
        "counts": {c: {k: int(v) for k, v in row.items()} for c, row in table.to_dict("index").items()},
        "imbalance_ratio": round(float(train_counts.max() / max(train_counts.min(), 1)), 3),
        "positive_class": positive_class,
        "positive_prior": None
        if positive_index is None
        else round(float(train_counts[positive_index] / train_counts.sum()), 4),
        "image_sizes": dict(sizes.most_common(10)),
        "distinct_image_sizes": len(sizes),
        "modes": dict(modes.most_common()),
        "channel_mean": mean,
        "channel_std": std,
        "duplicates_within_splits": within,
        "leakage_across_splits": across,
        "bad_files": sorted(bad),
        "unusual_files": dict(Counter(p.kind for p in check.warnings)) if check else {},
        "ignored_files": list(source.ignored_files),
        "table": table.to_string(),
    }
    if out_dir is not None:
        _write(report, source.class_names, usable["train"], config, Path(out_dir), table)
    return report


def _write(
    report: dict,
    class_names: tuple[str, ...],
    train: Split,
    config: DataConfig,
    out: Path,
    table: pd.DataFrame,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    # Letterbox so the aspect ratio shows; small in-memory images (digits, faces) are enlarged
    # with nearest-neighbour so their pixels stay crisp.
    interpolation = "bilinear" if train.from_files else "nearest"
    grid_config = replace(config, image_size=(128, 128), resize="pad", interpolation=interpolation)
    names = example_names(train, "train")
    dataset = Path(str(report["data"]).rstrip("/")).name or report["data"]
    grids, overview = [], {}
    for index, name in enumerate(class_names):
        available = np.flatnonzero(train.labels == index)
        chosen = np.sort(rng.permutation(available)[:9])
        if len(chosen) == 0:
            continue
        mask = np.zeros(len(train), bool)
        mask[chosen] = True
        images = np.stack([x for x, _ in decoded_images(train.subset(mask), grid_config).as_numpy_iterator()])
        title = f"class '{name}': {len(chosen)} of {len(available)} training images ({dataset})"
        fig = sample_grid(images, title, captions=[os.path.basename(names[i]) for i in chosen])
        path = out / f"samples_{_safe(name)}.png"
        fig.savefig(path, dpi=100)
        grids.append(path.name)
        overview[name] = images
    if overview:
        title = f"{dataset}: training images of each class"
        class_overview(overview, title).savefig(out / "samples_overview.png", dpi=80)
        report["sample_overview"] = "samples_overview.png"
    report["sample_grids"] = grids
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))
    (out / "report.md").write_text(render_markdown(report, table))


def render_markdown(report: dict, table: pd.DataFrame) -> str:
    lines = [
        f"# Data report: `{report['data']}`",
        "",
        f"Layout: {report['layout']}; classes: {', '.join(report['classes'])}.",
        "",
        "## Images per class and split",
        "",
        table.to_markdown(),
        "",
        f"- Imbalance ratio (largest / smallest train class): {report['imbalance_ratio']}",
    ]
    if report["positive_class"] is not None:
        lines.append(
            f"- Positive class `{report['positive_class']}`; its share of train (the prior threshold): "
            f"{report['positive_prior']}"
        )
    lines += [
        f"- Image sizes ({report['distinct_image_sizes']} distinct): "
        + ", ".join(f"{k} x{v}" for k, v in report["image_sizes"].items()),
        "- Modes: " + ", ".join(f"{k} x{v}" for k, v in report["modes"].items()),
        f"- Per-channel mean {report['channel_mean']}, std {report['channel_std']} (pixels in [0, 1])",
        f"- Exact duplicates within a split: {len(report['duplicates_within_splits'])} group(s)",
        f"- Leakage (identical content in two splits): {len(report['leakage_across_splits'])} group(s)",
    ]
    for group in report["leakage_across_splits"][:20]:
        lines.append(f"  - {' = '.join(group)}")
    lines.append(f"- Bad files (left out of the statistics and samples): {len(report['bad_files'])}")
    lines += [f"  - `{path}`" for path in report["bad_files"][:20]]
    if report["unusual_files"]:
        lines.append(
            "- Unusual but usable: " + ", ".join(f"{k} x{v}" for k, v in report["unusual_files"].items())
        )
    shown = ([report["sample_overview"]] if report.get("sample_overview") else []) + report.get(
        "sample_grids", []
    )
    lines += ["", "## Samples", ""] + [f"![{g}]({g})" for g in shown]
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
