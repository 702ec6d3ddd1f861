"""A folder of images with one sub-folder per class (or ``train/`` and ``test/`` folders, each so), read by
``datasets``' imagefolder builder: local files only, the sub-folders' names are the class names."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .registry import Source, register_source


@register_source("imagefolder")
class ImageFolderSource(Source):
    is_hf_dataset = True

    def check(self, data_cfg):
        if not Path(data_cfg.path).is_dir():
            raise ConfigError(f"data.path: {data_cfg.path!r} is not a folder (data.format=imagefolder reads a folder "
                              f"with one sub-folder of images per class)")

    def load(self, data_cfg, contract, seed, progress=False):
        from .hf import load_hf, read_dataset

        # The builder named outright: datasets' own guess from the files could pick another (a stray .csv).
        dsd = read_dataset(data_cfg.path, "imagefolder", data_dir=data_cfg.path)
        return load_hf(data_cfg, contract, seed, dsd, progress)

    def dataset_names(self, data):
        from .hf import path_names

        return path_names(str(data.get("path")))
