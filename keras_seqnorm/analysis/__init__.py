"""The paper's analyses as Python functions, each behind one command.

```python
from keras_seqnorm import analysis

result = analysis.compare(norms=("batch", "ghost"), seeds=2,
                          dataset="digits", epochs=3)
```

- `compare(norms, seeds, **recipe)`: one recipe trained with several norms
  and seeds, tabulated and plotted (`comparison.py`;
  `keras-seqnorm compare`).
- `landscape(norms, etas, **recipe)`: the loss landscape of Section 3.1
  per norm (`loss_landscape.py`, with the `LossLandscape` callback;
  `keras-seqnorm landscape`).
- `tune(objective_fn, run_dir, ...)` and `training_objective(**recipe)`:
  the sequential G_M-then-G_C search of Section 3.2.1 (`tuner.py`;
  `keras-seqnorm tune`).
- `reproduce(run_dir, out)`: the reproduction report `docs/results.md`
  (`report.py`; `keras-seqnorm reproduce`).

Each is imported on first use.
"""

from keras_seqnorm.utils import lazy_attributes

__all__ = [
    "LossLandscape",
    "compare",
    "landscape",
    "reproduce",
    "training_objective",
    "tune",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "LossLandscape": "keras_seqnorm.analysis.loss_landscape:LossLandscape",
        "compare": "keras_seqnorm.analysis.comparison:compare",
        "landscape": "keras_seqnorm.analysis.loss_landscape:landscape",
        "reproduce": "keras_seqnorm.analysis.report:reproduce",
        "training_objective": (
            "keras_seqnorm.analysis.tuner:training_objective"
        ),
        "tune": "keras_seqnorm.analysis.tuner:tune",
    },
)
