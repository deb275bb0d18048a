"""Housekeeping of the persistent pixel cache: `tfpipeline cache info` and `cache clear`."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipeline.data.pixel_cache import cache_root, limit_bytes


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    settings: list[dict[str, Any]]  # one entry per decode setting: settings, chunks, images, bytes
    total_bytes: int
    limit_bytes: int


def info(root: Path | None = None) -> CacheInfo:
    root = root or cache_root()
    entries, total = [], 0
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        size = sum(p.stat().st_size for p in folder.glob("*") if p.is_file())
        indexes = [p for p in folder.glob("*.json") if p.name != "settings.json"]
        images = 0
        for index_file in indexes:
            with contextlib.suppress(OSError, ValueError):
                images += len(json.loads(index_file.read_text()).get("keys", ()))
        try:
            described = json.loads((folder / "settings.json").read_text())
        except (OSError, ValueError):
            described = {}
        entries.append(
            {
                "key": folder.name,
                "settings": described,
                "chunks": len(indexes),
                "images": images,
                "bytes": size,
            }
        )
        total += size
    return CacheInfo(root=root, settings=entries, total_bytes=total, limit_bytes=limit_bytes())


def clear(root: Path | None = None) -> int:
    """Delete every cached pixel; returns the bytes freed."""
    root = root or cache_root()
    freed = info(root).total_bytes
    shutil.rmtree(root, ignore_errors=True)
    return freed
