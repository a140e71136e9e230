"""The training command: `keras-seqnorm train` (`train.main`).

- `config.py`: the frozen `Config` dataclass and the flags made from it.
- `presets.py`: the paper's recipes as named presets.
- `data.py`: the data sets as `tf.data` pipelines.
- `augment.py`: flips, pad-and-crop, Cutout, MixUp, RandAugment.
- `schedules.py`: the learning-rate schedules.
- `optimizers.py`: SGD with coupled (L2) weight decay.
- `callbacks.py`: resumable run directories.
- `train.py`: the strategy, the model, `fit`, `run(config)` and `main`.
"""
