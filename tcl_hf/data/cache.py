"""``python -m tcl_hf.data.cache list|clear [PATH]``: the decoded-image caches that ``decoded.py`` writes beside each
split's datasets cache, listed with their sizes or removed.

PATH defaults to the datasets cache (``HF_DATASETS_CACHE``, else ~/.cache/huggingface/datasets) and is searched
through. Only files named ``tcl_hf-decoded-*``, and the ``.tcl_hf-decoded-*.tmp`` files a killed writer leaves, are
touched; the datasets' own files stay. A run that finds its cache gone decodes again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..command import run_command
from ..errors import TCLError

PREFIX = "tcl_hf-decoded-"


def cache_entries(root: Path) -> dict[Path, list[Path]]:
    """The decode caches under ``root``: each cache's stem (folder / ``tcl_hf-decoded-KEY``) -> its files (images,
    mask, digest, and any temporary files of an unfinished write)."""
    entries: dict[Path, list[Path]] = {}
    for pattern in (f"{PREFIX}*", f".{PREFIX}*.tmp"):
        for path in root.rglob(pattern):
            if path.is_file() and not path.is_symlink():
                stem = path.parent / path.name.lstrip(".").split(".", 1)[0]
                entries.setdefault(stem, []).append(path)
    return dict(sorted(entries.items()))


def _size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def _folder(path: str | None) -> Path:
    if path is None:
        import datasets

        return Path(datasets.config.HF_DATASETS_CACHE)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TCLError(f"PATH: {folder} is not a folder; give the datasets cache folder that holds the decode caches")
    return folder


def list_caches(folder: Path) -> None:
    entries = cache_entries(folder)
    for stem, files in entries.items():
        kinds = ", ".join(sorted(f.name.lstrip(".").split(".", 1)[1] for f in files))
        print(f"{_mib(_size(files)):>14}  {stem}  ({kinds})")
    total = sum(_size(files) for files in entries.values())
    print(f"{_mib(total)} in {len(entries)} decode caches under {folder}"
          + (f"; remove them: python -m tcl_hf.data.cache clear {folder}" if entries else ""))


def clear_caches(folder: Path) -> None:
    files = [f for group in cache_entries(folder).values() for f in group]
    size = _size(files)
    for f in files:
        f.unlink(missing_ok=True)  # another process may have just renamed or removed it
    print(f"removed {len(files)} files ({_mib(size)}) of decode caches under {folder}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcl_hf.data.cache",
        description="List or remove the decoded-image caches (tcl_hf-decoded-* files) that runs write beside "
                    "their datasets cache.")
    parser.add_argument("action", choices=("list", "clear"), help="list the caches with their sizes, or remove them")
    parser.add_argument("path", nargs="?", help="folder to search (default: the datasets cache, HF_DATASETS_CACHE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    act = list_caches if args.action == "list" else clear_caches
    return run_command(lambda: act(_folder(args.path)), again="the same command")


if __name__ == "__main__":
    raise SystemExit(main())
