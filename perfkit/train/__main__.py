"""`python -m perfkit.train CONFIG` and `torchrun --nproc_per_node N -m perfkit.train CONFIG`."""

import sys

from perfkit.train.train_cmd import main

if __name__ == "__main__":
    sys.exit(main())
