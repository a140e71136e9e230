"""`make bench`: time the layers against BatchNormalization on this machine.

The same as `keras-seqnorm bench` (see `--help`): prints the tables and
writes nothing unless `--out PATH` is given. The committed results were
written with `--out benchmarks/results/<device>-<backend>.json`.
"""

from keras_seqnorm import benchmark

if __name__ == "__main__":
    benchmark.main()
