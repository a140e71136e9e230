"""`make bench`: time the layers against BatchNormalization on this machine.

Writes benchmarks/results/<device>-<backend>.json and .md unless `--out` is
given; every other flag is `keras-seqnorm bench`'s (see `--help`).
"""

import os
import re
import sys

import keras

from keras_seqnorm import benchmark


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        device = re.sub(r"[^A-Za-z0-9_.-]+", "-", benchmark.device_name())
        folder = os.path.join(os.path.dirname(__file__), "results")
        os.makedirs(folder, exist_ok=True)
        name = f"{device.strip('-')}-{keras.backend.backend()}.json"
        argv += ["--out", os.path.join(folder, name)]
    return benchmark.main(argv)


if __name__ == "__main__":
    main()
