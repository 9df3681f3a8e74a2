"""`python -m perfkit.train CONFIG` and `torchrun --nproc_per_node N -m perfkit.train CONFIG`."""

from perfkit.process_exit import exit_process
from perfkit.train.train_cmd import main

if __name__ == "__main__":
    exit_process(main())  # not sys.exit: a process group's threads must not race finalization
