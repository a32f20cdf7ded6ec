"""Segmentation refinement (PPAC; PAC-CRF, hot-swap and AAF plug in): ``python -m experiments.train_segmentation``."""
