"""Data: every way of reading a dataset as one registered source (``registry``), decoded under one input contract.

``load_data(data_cfg, contract, seed)`` asks the source that ``data.format`` names for a ``DataBundle``; one
module per source (``hf``: any 🤗 dataset and the quickstart's digits, ``webvision``, ``clothing1m``), ``lists``
and ``load`` for datasets read from their file lists, ``images`` and ``decoded`` for decoding, ``contract`` for
the preprocessing. What each step sees is ``tcl_hf.feeding``'s; label files are ``tcl_hf.noise``'s.
"""
from .bundle import DataBundle
from .contract import InputContract, resolve_input_contract
from .registry import get_source, load_data

__all__ = ["DataBundle", "InputContract", "get_source", "load_data", "resolve_input_contract"]
