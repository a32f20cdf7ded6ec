"""``python -m experiments.train_segmentation``: segmentation refinement (see ``main.py``)."""
import sys

from experiments.train_segmentation.main import main

sys.exit(main())
