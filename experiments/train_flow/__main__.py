import sys

from experiments.train_flow.main import main

sys.exit(main())
