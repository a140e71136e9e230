"""`python -m keras_seqnorm COMMAND [flags]`: the `keras-seqnorm` command
(see `keras_seqnorm.cli`)."""

import sys

from keras_seqnorm.cli import main

if __name__ == "__main__":
    sys.exit(main())
