#!/usr/bin/env python
"""Train an image classifier on noisy labels with TCL: ``python train.py RECIPE.yaml [key=value ...]``."""
from tcl_hf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
