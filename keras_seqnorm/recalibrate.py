"""Recomputing the moving statistics of a trained model's norm layers.

`recalibrate_statistics(model, data)` replaces the exponential moving
averages that training leaves in every norm layer with the exact average of
the statistics over a pass of `data` ("PreciseBN": Wu and Johnson, 2021,
"Rethinking 'Batch' in BatchNorm"; fvcore's `update_bn_stats`, PyTorch's
`torch.optim.swa_utils.update_bn`).

How it works, without a hook in any layer: each norm layer's `call` is
wrapped, on the instance and only while the function runs, so that besides
computing its output it hands its input and mask to a *probe*: a fresh copy
of the layer (from its config) with `momentum=0`, whose training-mode update
therefore writes the statistics of exactly that call into its moving
statistics. The probe's update is the layer's own code, so the statistics
are the ones the layer normalizes with in training. The model runs in
training mode inside a `keras.StatelessScope`, so no variable of the model
is written while it runs; the moving statistics are assigned once, at the
end.
"""

import dataclasses
import inspect
import sys
import threading

import keras
import numpy as np

from keras_seqnorm import validation
from keras_seqnorm.norms import NORM_LAYERS
from keras_seqnorm.norms import layer_class
from keras_seqnorm.utils import iter_sublayers

STATISTICS = ("ghost", "population")

# The statistics recorded by the forward pass running on this thread (one
# thread per replica under a `tf.distribute` strategy); unset otherwise.
_LOCAL = threading.local()


@dataclasses.dataclass(frozen=True)
class RecalibratedLayer:
    """What `recalibrate_statistics` did to one norm layer.

    `dataclasses.asdict(summary)` gives a JSON-ready dict.

    Attributes:
        path: The layer's name, prefixed with the names of the models it is
            nested in (`"res_net_backbone/conv1_bn"`); its key in the dict
            `recalibrate_statistics` returns.
        layer_class: The layer's class name.
        statistics: `"ghost"` or `"population"`.
        count: Values per channel that the new statistics average over:
            samples times positions, unmasked ones only. 0 when the layer
            never ran in training mode; its statistics are then unchanged.
        batches: Normalization batches seen: one per call of the layer on
            each replica (one per call over all replicas for synchronized
            BatchNormalization). Ghost batches are not counted apart.
        mean_shift: How far the moving mean moved, in units of the old
            standard deviation: the largest over channels of
            `|new_mean - old_mean| / sqrt(old_variance + epsilon)`.
        variance_ratio: How far the moving variance moved: the largest over
            channels of `max(r, 1 / r)` with `r = (new_variance + epsilon) /
            (old_variance + epsilon)`; 1.0 means unchanged.
    """

    path: str
    layer_class: str
    statistics: str
    count: int
    batches: int
    mean_shift: float
    variance_ratio: float


class _Moments:
    """Exact running statistics of per-batch (count, mean, variance) triples.

    Keeps the total count, the mean, the sum of squared deviations from the
    mean (Chan et al.'s parallel formula: the population variance) and the
    count-weighted sum of the batch variances (their average), in float64.
    """

    def __init__(self, channels):
        self.count = np.zeros(channels)
        self.mean = np.zeros(channels)
        self.squares = np.zeros(channels)
        self.within = np.zeros(channels)
        self.batches = 0

    def add(self, count, mean, variance):
        seen = count > 0
        if not seen.any():
            return
        # A batch without values may hold NaN statistics: 0 * NaN is NaN.
        mean = np.where(seen, mean, 0.0)
        variance = np.where(seen, variance, 0.0)
        total = self.count + count
        safe = np.where(total > 0, total, 1.0)
        delta = mean - self.mean
        self.squares += count * variance + delta**2 * self.count * count / safe
        self.mean += delta * count / safe
        self.within += count * variance
        self.count = total
        self.batches += 1

    def statistics(self, kind):
        safe = np.where(self.count > 0, self.count, 1.0)
        spread = self.squares if kind == "population" else self.within
        return self.mean, spread / safe


class _Target:
    """One norm layer to recalibrate: its probe and its running moments."""

    def __init__(self, path, layer, statistics):
        self.path = path
        self.layer = layer
        self.channel_axis = layer.axis % layer.input_spec.ndim
        self.synchronized = bool(getattr(layer, "synchronized", False))
        self.moments = _Moments(layer.moving_mean.shape[0])
        self.probe = _make_probe(layer, statistics)


def _make_probe(layer, statistics):
    """A copy of `layer` whose training-mode update stores the statistics
    of one call: momentum 0, no noise, no cross-replica reduction, and one
    ghost batch for `"population"` statistics."""
    config = layer.get_config()
    overrides = {
        "momentum": 0.0,
        # BatchNormalization's own; merged across replicas below.
        "synchronized": False,
        "renorm": False,
        # NoisyBatchNormalization: inference adds no noise.
        "stddev": 0.0,
    }
    if statistics == "population":
        overrides.update(groups_m=1, ghost_batch_size=None)
    config.update(
        {key: value for key, value in overrides.items() if key in config}
    )
    probe = type(layer).from_config(config)
    shape = [None] * layer.input_spec.ndim
    shape[layer.axis] = layer.moving_mean.shape[0]
    probe.build(tuple(shape))
    return probe


def _value_counts(inputs, mask, channel_axis):
    """Unmasked values per channel of one call's input, as float64 (C,)."""
    shape = tuple(inputs.shape)
    if mask is None:
        return np.full(shape[channel_axis], np.prod(shape) / shape[
            channel_axis
        ])
    keep = np.asarray(keras.ops.convert_to_numpy(mask), bool)[..., None]
    keep = np.broadcast_to(keep, shape)
    axes = tuple(a for a in range(len(shape)) if a != channel_axis)
    return keep.sum(axis=axes).astype(np.float64)


def _probe_statistics(target, inputs, mask):
    """(count, mean, variance) of one call of `target`'s layer."""
    probe = target.probe
    with keras.StatelessScope() as scope:
        probe.call(inputs, training=True, mask=mask)
    values = [
        scope.get_current_value(v)
        for v in (probe.moving_mean, probe.moving_variance)
    ]
    if any(value is None for value in values):
        raise ValueError(
            f"The layer {target.path} ({type(target.layer).__name__}) does "
            "not update its moving statistics in training mode, so "
            "recalibrate_statistics cannot read them. "
            f"Received: layer={target.layer.name!r}"
        )
    mean, variance = (
        np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in values
    )
    return _value_counts(inputs, mask, target.channel_axis), mean, variance


def _recording_call(index, target, call):
    signature = inspect.signature(call)

    def recording_call(*args, **kwargs):
        outputs = call(*args, **kwargs)
        records = getattr(_LOCAL, "records", None)
        arguments = signature.bind(*args, **kwargs).arguments
        if records is not None and arguments.get("training"):
            inputs = next(iter(arguments.values()))
            mask = arguments.get("mask")
            records.append((index, *_probe_statistics(target, inputs, mask)))
        return outputs

    return recording_call


class _Recording:
    """Wraps every target layer's `call` (on the instance) while active."""

    def __init__(self, targets):
        self.targets = targets
        self.saved = []

    def __enter__(self):
        try:
            for index, target in enumerate(self.targets):
                layer = target.layer
                wrapped = _recording_call(index, target, layer.call)
                self.saved.append(
                    (layer, "call" in vars(layer), vars(layer).get("call"))
                )
                object.__setattr__(layer, "call", wrapped)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        while self.saved:
            layer, had_own, own = self.saved.pop()
            if had_own:
                object.__setattr__(layer, "call", own)
            else:
                object.__delattr__(layer, "call")


def _norm_layers(model):
    """`(path, layer)` of every trainable registry layer with moving
    statistics, nested models included, each layer once."""
    classes = tuple({layer_class(f) for f in NORM_LAYERS.values()})
    return [
        (path, layer) for path, layer in iter_sublayers(model)
        if isinstance(layer, classes)
        and layer.built
        and layer.trainable
        and getattr(layer, "moving_mean", None) is not None
        and getattr(layer, "moving_variance", None) is not None
    ]


def _forward(model, x, carried):
    """Runs `model(x, training=True)` without writing any variable.

    `carried` maps `id(variable)` to `(variable, value)` for the state the
    previous steps left (seed generators), so dropout and noise differ from
    step to step; it is updated in place. Returns the recorded statistics.
    """
    _LOCAL.records = records = []
    try:
        with keras.StatelessScope(state_mapping=list(carried.values())) as s:
            model(x, training=True)
    finally:
        _LOCAL.records = None
    for variable in model.non_trainable_variables:
        value = s.get_current_value(variable)
        if value is not None:
            carried[id(variable)] = (variable, value)
    return records


def _is_tf_dataset(data):
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _is_array(data):
    return hasattr(data, "shape") and hasattr(data, "__getitem__")


def _check_arguments(model, data, steps, statistics, batch_size):
    if not isinstance(model, keras.layers.Layer) or not model.built:
        raise ValueError(
            "Argument `model` must be a built `keras.Model` (call it on data "
            f"or build it first). Received: model={model!r}"
        )
    validation.choice("statistics", statistics, STATISTICS)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        validation.positive_int(name, value, allow_none=True)
    arrays = isinstance(data, (tuple, dict)) or _is_array(data)
    if not (arrays or _is_tf_dataset(data) or hasattr(data, "__next__")):
        raise ValueError(
            "Argument `data` must be a `tf.data.Dataset`, a NumPy array (or "
            "a tuple `(x, y)` or dict of arrays) or a Python generator of "
            f"batches. Received: data={data!r}"
        )
    if batch_size is not None and not arrays:
        raise ValueError(
            "Argument `batch_size` applies to array data only: a data set "
            "or generator yields its own batches. "
            f"Received: batch_size={batch_size}"
        )
    if _is_tf_dataset(data):
        cardinality = int(data.cardinality())
        if steps is None and cardinality == -1:  # tf.data.INFINITE
            raise ValueError(
                "Argument `steps` must be given for an infinite data set. "
                f"Received: steps={steps}"
            )


def _array_batches(data, batch_size):
    x = keras.utils.unpack_x_y_sample_weight(data)[0]
    first = keras.tree.flatten(x)[0]
    size = first.shape[0]
    for start in range(0, size, batch_size):
        yield keras.tree.map_structure(
            lambda a, start=start: a[start:start + batch_size], x
        )


def _element_batches(data):
    if _is_tf_dataset(data) and keras.backend.backend() != "tensorflow":
        data = data.as_numpy_iterator()
    for element in data:
        yield keras.utils.unpack_x_y_sample_weight(element)[0]


def _batches(data, batch_size):
    if _is_tf_dataset(data) or hasattr(data, "__next__"):
        return _element_batches(data)
    return _array_batches(data, batch_size or 32)


def _strategy(model):
    """The model's `tf.distribute` strategy when it has several replicas."""
    if keras.backend.backend() != "tensorflow":
        return None
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return None
    return strategy


def _run(model, targets, data, steps, batch_size):
    """Runs the forward passes; returns the batches run and per-step
    records: lists (one per replica) of `(index, count, mean, variance)`."""
    strategy = _strategy(model)
    if strategy is None:
        carried = {}
        steps_run = 0
        for x in _batches(data, batch_size):
            if steps is not None and steps_run == steps:
                break
            yield [_forward(model, x, carried)]
            steps_run += 1
        return
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    carried = [{} for _ in range(replicas)]
    results = [None] * replicas

    def replica_step(x):
        context = tf.distribute.get_replica_context()
        replica = int(context.replica_id_in_sync_group)
        results[replica] = _forward(model, x, carried[replica])

    if _is_tf_dataset(data):
        batches = (
            keras.utils.unpack_x_y_sample_weight(element)[0]
            for element in strategy.experimental_distribute_dataset(data)
        )
    else:
        batches = (
            next(iter(strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensors(x)
            )))
            for x in _batches(data, batch_size)
        )
    steps_run = 0
    for x in batches:
        if steps is not None and steps_run == steps:
            break
        strategy.run(replica_step, args=(x,))
        yield list(results)
        steps_run += 1


def _accumulate(targets, per_replica):
    """Adds one step's records to the targets' moments."""
    merged = {}
    for records in per_replica:
        calls = {}
        for index, count, mean, variance in records:
            target = targets[index]
            call = calls[index] = calls.get(index, -1) + 1
            if target.synchronized and len(per_replica) > 1:
                # One normalization batch over all replicas.
                moments = merged.setdefault(
                    (index, call), _Moments(count.shape[0])
                )
                moments.add(count, mean, variance)
            else:
                target.moments.add(count, mean, variance)
    for (index, _), moments in merged.items():
        mean, variance = moments.statistics("population")
        targets[index].moments.add(moments.count, mean, variance)


def _summary(target, statistics, old_mean, old_variance, new_mean,
             new_variance):
    epsilon = target.layer.epsilon
    shift = np.abs(new_mean - old_mean) / np.sqrt(old_variance + epsilon)
    ratio = (new_variance + epsilon) / (old_variance + epsilon)
    return RecalibratedLayer(
        path=target.path,
        layer_class=type(target.layer).__name__,
        statistics=statistics,
        count=int(target.moments.count.max()),
        batches=target.moments.batches,
        mean_shift=float(shift.max()),
        variance_ratio=float(np.maximum(ratio, 1.0 / ratio).max()),
    )


def recalibrate_statistics(model, data, steps=None, statistics="ghost",
                           batch_size=None):
    """Sets every norm layer's moving statistics to their exact average.

    Runs `model` forward in training mode over `steps` batches of `data`
    and sets the `moving_mean` and `moving_variance` of every
    `GhostNormalization`, `SequentialNormalization`, `BatchNormalization`
    and `NoisyBatchNormalization` (every layer of `NORM_LAYERS` with moving
    statistics, subclasses included, in nested models too) to the exact
    average over those batches of the statistics the layer computes in
    training mode, instead of the exponential moving average that training
    leaves ("PreciseBN", Wu and Johnson, 2021).

    Every value weighs the same: a ghost batch (or batch) of `n` values,
    samples times positions that are not masked, counts `n` times, so an
    uneven last batch, uneven ghost batches and masked positions weigh in
    proportion to the values they hold. With ghost batches of equal size
    this is the plain average over ghost batches.

    - `statistics="ghost"`: the moving mean is the average of the ghost
      batches' means and the moving variance the average of their biased
      variances: what training normalized with. For SeqNorm these are the
      statistics of the group-normalized values; for BatchNormalization the
      ghost batch is the batch (per replica; over all replicas when
      `synchronized`).
    - `statistics="population"`: the mean and biased variance of all the
      values the layer saw (for SeqNorm: of the group-normalized values),
      which also hold the spread between the ghost batches' (and batches')
      means. The mean is the same in both modes.

    The model runs as in training: every layer in training mode (dropout
    and noise included; `NoisyBatchNormalization`'s statistics are taken
    without its noise, which inference does not add), the norm layers
    normalizing with their batch statistics, so the statistics are those of
    the inputs each layer sees in training. No variable but the moving
    statistics changes: not the weights, not the seed generators' state, not
    the optimizer. Layers with `trainable=False` normalize with their moving
    statistics in training too and are left alone.

    Under a `tf.distribute` strategy (the model created in its scope), each
    replica runs its share of every batch, split as `fit` splits it, and
    forms its ghost batches within it, as in training; every replica ends
    with the same statistics. The forward passes run eagerly, one batch at a
    time.

    Args:
        model: A built `keras.Model` (or layer).
        data: The batches: a `tf.data.Dataset` of `x` or `(x, y[, w])`
            batches, a NumPy array `x` (or a tuple `(x, y)`, or a dict of
            arrays for several inputs), split into batches of `batch_size`,
            or a Python generator or iterator of batches.
        steps: Number of batches to average over. Defaults to `None`: one
            pass over `data` (which must then be finite).
        statistics: `"ghost"` or `"population"`, as above. Defaults to
            `"ghost"`.
        batch_size: Batch size for array `data`. Defaults to `None`: 32.

    Returns:
        A dict from each recalibrated layer's path (its name, prefixed with
        the names of the models it is nested in) to a `RecalibratedLayer`:
        how many values the new statistics average over and how far they
        moved from the old ones.

    Raises:
        ValueError: for an argument of the wrong kind or value, a model
            without a trainable norm layer with moving statistics, `steps`
            larger than the batches `data` holds, or `data` without a batch.
            The model is then left unchanged.

    Example:

    >>> model.fit(x_train, y_train, epochs=3)
    >>> summary = recalibrate_statistics(model, x_train, steps=20)
    >>> model.evaluate(x_test, y_test)
    """
    _check_arguments(model, data, steps, statistics, batch_size)
    layers = _norm_layers(model)
    if not layers:
        raise ValueError(
            "Argument `model` holds no trainable norm layer with moving "
            f"statistics ({', '.join(NORM_LAYERS)} with moving statistics) "
            f"to recalibrate. Received: model={model.name!r}"
        )
    targets = [_Target(path, layer, statistics) for path, layer in layers]
    steps_run = 0
    with _Recording(targets):
        for per_replica in _run(model, targets, data, steps, batch_size):
            _accumulate(targets, per_replica)
            steps_run += 1
    if steps_run == 0:
        raise ValueError(
            f"Argument `data` holds no batch. Received: data={data!r}"
        )
    if steps is not None and steps_run < steps:
        raise ValueError(
            f"Argument `steps` is larger than the {steps_run} batches that "
            f"`data` holds. Received: steps={steps}"
        )
    summaries = {}
    for target in targets:
        layer = target.layer
        old_mean, old_variance = (
            np.asarray(keras.ops.convert_to_numpy(v), np.float64)
            for v in (layer.moving_mean, layer.moving_variance)
        )
        new_mean, new_variance = target.moments.statistics(statistics)
        seen = target.moments.count > 0
        new_mean = np.where(seen, new_mean, old_mean)
        new_variance = np.where(seen, new_variance, old_variance)
        for variable, value in (
            (layer.moving_mean, new_mean),
            (layer.moving_variance, new_variance),
        ):
            variable.assign(value.astype(variable.dtype))
        summaries[target.path] = _summary(
            target, statistics, old_mean, old_variance, new_mean,
            new_variance,
        )
    return summaries
