"""Datasets, apart from the model: the manifest format (manifest.py), the synthetic toy world
(toyworld.py) and its instruction dialogs (dialogs.py).

Nothing here imports the model, torch or the encoders/decoders, so data can be made and checked
without loading any of them. See docs/architecture.md for where this sits.
"""
