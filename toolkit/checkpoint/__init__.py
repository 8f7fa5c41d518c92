"""Checkpoints: what a `.pth` must hold and how it is read.

    layout.py     the released checkpoint's key layout, as packaged data (toolkit/data/layout.json)
    loader.py     safe loading (no pickled code runs), validation against the layout, and
                  `resolve_weights`: a checkpoint or the embedded default, with one label
    weights.py    the embedded default checkpoint: deterministic weights, NOT the trained ones
    inventory.py  the component table of `toolkit inspect`

Imports: errors, files, and (inventory only) the component registry; no model code, no runners.
"""
