import sys

from experiments.train_upsample.main import main

sys.exit(main())
