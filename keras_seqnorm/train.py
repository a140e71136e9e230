"""`python -m keras_seqnorm.train [flags]`: the `keras-seqnorm train`
command (see `keras_seqnorm.training.train`)."""

import sys

from keras_seqnorm.training.train import main

if __name__ == "__main__":
    from keras_seqnorm.cli import exit_status

    sys.exit(exit_status(main()))
