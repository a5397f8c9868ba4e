"""CIFAR-10 from ../shared/data, unpacked once into class folders for the benchmarks."""

import os
import zipfile
from pathlib import Path

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"
CACHE = Path(os.environ.get("SSLVIT_BENCH_CACHE", "/tmp/sslvit-bench")) / "cifar10"


def cifar10_folders() -> tuple[Path, Path]:
    """Return the (train, test) folders, unpacking the shared zip on first use."""
    if not SHARED_ZIP.is_file():
        raise SystemExit(f"{SHARED_ZIP}: CIFAR-10 zip not found (see ../shared/data/README.md)")
    done = CACHE / ".complete"
    if not done.exists():
        with zipfile.ZipFile(SHARED_ZIP) as archive:
            archive.extractall(CACHE)
        done.touch()
    roots = [p for p in CACHE.rglob("train") if p.is_dir()]
    if not roots:
        raise SystemExit(f"{CACHE}: no train/ folder after unpacking {SHARED_ZIP}")
    return roots[0], roots[0].parent / "test"
