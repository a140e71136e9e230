"""Training one model: `train(config)` and the `Config` it takes.

```python
from keras_seqnorm.training import Config, train

results = train(Config(dataset="digits", norm="ghost", groups_m=4))
results["test_accuracy"]
```

- `config.py`: the frozen `Config` dataclass and the flags made from it.
- `presets.py`: the paper's recipes as named presets.
- `data.py`: the data sets as `tf.data` pipelines.
- `augment.py`: flips, pad-and-crop, Cutout, MixUp, RandAugment.
- `schedules.py`: the learning-rate schedules.
- `optimizers.py`: SGD with coupled (L2) weight decay.
- `callbacks.py`: resumable run directories.
- `trainer.py`: `train(config)`: the strategy, the model, `fit`, the
  results.

`train` is imported on first use, with Keras; `Config` needs neither Keras
nor TensorFlow.
"""

from keras_seqnorm.training.config import Config
from keras_seqnorm.training.config import make_config
from keras_seqnorm.utils import lazy_attributes

__all__ = ["Config", "make_config", "train"]

__getattr__, __dir__ = lazy_attributes(
    __name__, {"train": "keras_seqnorm.training.trainer:train"}
)
