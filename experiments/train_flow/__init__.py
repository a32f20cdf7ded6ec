"""``python -m experiments.train_flow``: PPAC flow refinement (see ``main.py``)."""
