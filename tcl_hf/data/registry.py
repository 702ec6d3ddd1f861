"""Every way of reading data (``data.format``) as one registered ``Source``: the rest of the package asks the
source, never the format's name.

A source module subclasses ``Source``, decorates it with ``@register_source("name")`` and is named in
``SOURCE_MODULES``; that is all a new source needs (and the name in ``DataConfig.format``'s Literal, which
tests/test_structure.py checks against this registry). Source modules stay light at import (no torch,
datasets): the configuration's checks ask them before any data is read.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError, TCLError

if TYPE_CHECKING:  # tcl_hf.config asks the registry, so nothing here names the config or a bundle's modules
    import datasets

# The modules whose import registers the sources, in the order their names are listed.
SOURCE_MODULES = ("hf", "webvision", "clothing1m", "imagefolder", "image_list")

# data.format's default (tcl_hf.config): a run configuration written without one read a 🤗 dataset.
DEFAULT_SOURCE = "hf"

_SOURCES: dict[str, Source] = {}


class Source:
    """What the package needs of a data source; the defaults are those of data read from file lists in a
    dataset's own layout (``data.root``)."""
    name = ""
    # A 🤗 dataset read from data.path: its train split is named by data.train_split and a repaired dataset
    # keeps every column of it as it is.
    is_hf_dataset = False
    # TCL's published test accuracy (%) on this source's data, by recipe stem (spec section 8).
    paper_test_acc: dict[str, float] = {}

    def check(self, data_cfg) -> None:
        """Refuse settings this source cannot read, before any work (a ``ConfigError`` naming the key)."""
        if not data_cfg.root:
            raise ConfigError(f"data.root: required when data.format={self.name} (the dataset's top folder)")
        if not Path(data_cfg.root).is_dir():
            raise ConfigError(f"data.root: {data_cfg.root!r} is not a folder")

    def load(self, data_cfg, contract, seed: int, progress: bool = False):
        """The data as a ``tcl_hf.data.DataBundle``, decoded as the ``InputContract`` says (``progress``: a bar
        while in-memory sets decode)."""
        raise NotImplementedError

    def dataset_names(self, data: dict) -> tuple[str, str, str | None]:
        """(display name, type for a card's model-index, Hub dataset id or None) from a run's public ``data``."""
        return self.name, self.name, None

    def image_rows(self, bundle) -> datasets.Dataset:
        """The training images as one ``image`` column, for a repaired dataset (a file path per row)."""
        import datasets

        paths = [bundle.train.path(i) for i in range(len(bundle.train))]
        return datasets.Dataset.from_dict({"image": paths}, features=datasets.Features({"image": datasets.Image()}))


def register_source(name: str) -> Callable[[type[Source]], type[Source]]:
    """Class decorator: make ``cls()`` the source of ``data.format=name``."""
    def register(cls: type[Source]) -> type[Source]:
        if name in _SOURCES:
            raise TCLError(f"data source {name!r} is registered twice")
        source = cls()
        source.name = name
        _SOURCES[name] = source
        return cls

    return register


def _sources() -> dict[str, Source]:
    for module in SOURCE_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return _SOURCES


def source_names() -> list[str]:
    return list(_sources())


def get_source(name: str) -> Source:
    sources = _sources()
    if name not in sources:
        raise ConfigError(f"data.format: {name!r} is not a data source; allowed: {', '.join(sources)}")
    return sources[name]


def paper_test_acc() -> dict[str, float]:
    """TCL's published test accuracy (%) by recipe stem, over every source."""
    return {stem: acc for source in _sources().values() for stem, acc in source.paper_test_acc.items()}


def load_data(data_cfg, contract, seed: int = 0, progress: bool = False):
    """Read the splits named by the config, decoded as ``contract`` says; a contract without mean/std
    gets the data's own statistics (in-memory sets) or the dataset's published ones. ``progress``: a bar for
    the decoding of in-memory sets (file lists decode lazily, in the loaders)."""
    return get_source(data_cfg.format).load(data_cfg, contract, seed, progress)
