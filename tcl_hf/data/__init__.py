"""Data: datasets through Hugging Face ``datasets`` and the real-world layouts, decoded under one input contract.

``load_data(data_cfg, contract, seed)`` returns a ``DataBundle``; one module per source (``hf``,
``webvision``, ``clothing1m``, ``cifarn`` label files), ``images`` for decoding and the datasets that hand
images out, ``contract`` for the preprocessing, ``sampler`` and ``batches`` for what each step sees.
"""
from .bundle import DataBundle
from .contract import InputContract, resolve_input_contract
from .load import load_data

__all__ = ["DataBundle", "InputContract", "load_data", "resolve_input_contract"]
