"""`python -m keras_seqnorm.train [flags]`: the `keras-seqnorm train`
command (see `keras_seqnorm.training.train`)."""

from keras_seqnorm.training.train import main

if __name__ == "__main__":
    main()
