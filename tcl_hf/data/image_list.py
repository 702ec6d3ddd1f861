"""One parquet or CSV file with a row per image: a column of image paths (relative to the file's folder, and
never leading out of it) and a label column, integers or class names."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from .registry import Source, register_source

_KINDS = {".parquet": "parquet", ".csv": "csv"}


def resolved_paths(paths: list, list_file: Path, column: str) -> list[str]:
    """Each row's image path made absolute against the list's folder; a path that leads outside that folder
    (``..``, an absolute path, a link pointing away) is refused: a downloaded list must read only its own files."""
    folder = list_file.resolve().parent
    first_row = 2 if list_file.suffix == ".csv" else 0  # a CSV's line numbers count its header line
    resolved = []
    for row, text in enumerate(paths, start=first_row):
        where = f"{list_file.name} {'line' if list_file.suffix == '.csv' else 'row'} {row}"
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: data.image_column {column!r} holds {text!r}; expected an image path")
        path = (folder / text).resolve()
        if not path.is_relative_to(folder):
            raise DataError(f"{where}: image path {text!r} leads outside {folder.name}/, the list's folder; a list "
                            f"may only name images inside its own folder")
        resolved.append(str(path))
    return resolved


@register_source("image_list")
class ImageListSource(Source):
    # The rows' columns are kept as they are, the path column read as images.
    is_hf_dataset = True

    def check(self, data_cfg):
        path = Path(data_cfg.path)
        if path.suffix not in _KINDS or not path.is_file():
            raise ConfigError(f"data.path: {data_cfg.path!r} is not a .parquet or .csv file (data.format=image_list "
                              f"reads one, a row per image)")
        if not data_cfg.image_column:
            raise ConfigError("data.image_column: required when data.format=image_list (the column of image paths, "
                              "relative to the list's folder)")

    def load(self, data_cfg, contract, seed, progress=False):
        import datasets

        from .hf import load_hf, read_dataset

        list_file, column = Path(data_cfg.path), data_cfg.image_column
        rows = read_dataset(data_cfg.path, _KINDS[list_file.suffix], data_files={"train": str(list_file)})["train"]
        if column not in rows.column_names:
            raise DataError(f"data.image_column: column {column!r} not in {list_file.name}; columns: "
                            f"{', '.join(rows.column_names)}")
        images, order = resolved_paths(rows[column], list_file, column), rows.column_names
        rows = rows.remove_columns(column).add_column(column, images).select_columns(order)
        rows = rows.cast_column(column, datasets.Image())
        return load_hf(data_cfg, contract, seed, datasets.DatasetDict({"train": rows}), progress)

    def dataset_names(self, data):
        from .hf import path_names

        return path_names(str(data.get("path")))
