"""Every layer of the norm registry keeps the contract of `contract.py`."""

import dataclasses
import functools

import keras
import numpy as np
import pytest

from keras_seqnorm import NORM_LAYERS
from keras_seqnorm import get_norm_layer
from tests.helpers import ghost_norm_reference
from tests.helpers import group_norm_reference
from tests.helpers import seq_norm_reference
from tests.helpers import to_numpy
from tests.layers import contract

EPSILON = 1e-4
SHAPE = (8, 5, 4)  # (batch, steps, channels)


@dataclasses.dataclass(frozen=True)
class Case:
    """What the contract expects of one registry norm.

    `norm_kwargs` are non-default arguments of the norm; `weights` the
    counts of trainable and non-trainable weights after `build`;
    `float16_range` whether the layer promises inputs beyond float16's range
    under `mixed_float16` (it reads them in float32); `masked_reference`
    maps (inputs, mask) to the training outputs and, for a layer with moving
    statistics, the batch mean and variance they move towards.
    """

    norm_kwargs: dict
    weights: tuple
    float16_range: bool
    masked_reference: object


def _ghost_reference(groups_m):
    return functools.partial(
        ghost_norm_reference, groups_m=groups_m, epsilon=EPSILON
    )


def _sequential_reference(x, mask):
    return seq_norm_reference(
        x, groups_c=2, groups_m=2, epsilon=EPSILON, mask=mask
    )


def _group_reference(x, mask):
    # As keras.layers.GroupNormalization: the mask passes through, the
    # statistics cover every position.
    return (group_norm_reference(x, groups_c=2, epsilon=EPSILON),)


def _identity_reference(x, mask):
    return (x,)


CASES = {
    "batch": Case({"momentum": 0.5}, (2, 2), False, _ghost_reference(1)),
    "sync_batch": Case(
        {"momentum": 0.5}, (2, 2), False, _ghost_reference(1)
    ),
    "ghost": Case(
        {"groups_m": 2, "momentum": 0.5}, (2, 2), True, _ghost_reference(2)
    ),
    "sequential": Case(
        {"groups_c": 2, "groups_m": 2, "momentum": 0.5},
        (2, 2),
        True,
        _sequential_reference,
    ),
    "group": Case({"groups": 2}, (2, 0), True, _group_reference),
    "noisy_batch": Case(
        {"momentum": 0.5, "seed": 3}, (2, 2), False, _ghost_reference(1)
    ),
    "none": Case({}, (0, 0), False, _identity_reference),
}


def _available(name):
    return name != "sync_batch" or keras.backend.backend() == "tensorflow"


NAMES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            not _available(name),
            reason="sync_batch needs TensorFlow (see test_norms)",
        ),
    )
    for name in CASES
]


def _factory(name):
    make = get_norm_layer(name, **CASES[name].norm_kwargs)
    return functools.partial(make, axis=-1, epsilon=EPSILON)


def _has_moving_statistics(name):
    return CASES[name].weights[1] > 0


def test_every_registry_norm_has_a_case():
    assert list(CASES) == list(NORM_LAYERS)


@pytest.mark.parametrize("name", NAMES)
def test_weights_after_build(name):
    contract.check_weights_after_build(
        _factory(name), (None, *SHAPE[1:]), *CASES[name].weights
    )


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_call_with_unknown_batch_size(name):
    contract.check_symbolic_call(_factory(name), SHAPE)


@pytest.mark.parametrize("name", NAMES)
def test_jit_compile_equals_eager(name):
    x = contract.random_inputs((14, *SHAPE[1:]), seed=1)
    y = contract.random_inputs((14, SHAPE[1], 2), seed=2)
    # TensorFlow draws other random numbers under XLA (its stateless RNG
    # picks another algorithm there): noisy_batch's noise (stddev 3e-4)
    # then differs between the two runs.
    random = name == "noisy_batch" and keras.backend.backend() == "tensorflow"
    contract.check_jit_compile_equals_eager(
        _factory(name), x, y, tolerance=1e-3 if random else 1e-5
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "policy, rtol, atol",
    [("mixed_float16", 1e-2, 1e-2), ("mixed_bfloat16", 2e-2, 5e-2)],
)
def test_mixed_precision(name, policy, rtol, atol):
    contract.check_mixed_precision(
        _factory(name), contract.random_inputs(SHAPE), policy, rtol, atol
    )


@pytest.mark.parametrize(
    "name", [n for n in CASES if CASES[n].float16_range]
)
def test_mixed_float16_inputs_beyond_its_range(name):
    # 68000..72000 overflows float16 (max 65504) unless read in float32.
    x = contract.random_inputs(SHAPE, loc=70000.0, scale=500.0)
    contract.check_mixed_precision(
        _factory(name), x, "mixed_float16", rtol=1e-2, atol=1e-2
    )


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    expected = {
        "axis": -1,
        "epsilon": EPSILON,
        **getattr(NORM_LAYERS[name], "keywords", {}),
        **CASES[name].norm_kwargs,
    }
    contract.check_config_round_trip(
        _factory(name), contract.random_inputs(SHAPE), expected
    )


@pytest.mark.parametrize("name", NAMES)
def test_trainable_false_means_inference(name):
    contract.check_frozen_layer_is_inference(
        _factory(name),
        contract.random_inputs(SHAPE),
        _has_moving_statistics(name),
    )


@pytest.mark.parametrize("name", NAMES)
def test_mask_passes_through_and_masked_statistics(name):
    assert _factory(name)().supports_masking
    mask = np.ones(SHAPE[:2], bool)
    mask[:, 3:] = False
    mask[1, 1:] = False
    mask[5] = False
    contract.check_masking(
        _factory(name),
        contract.random_inputs(SHAPE, seed=4),
        mask,
        CASES[name].masked_reference,
        # The noise of noisy_batch (stddev 3e-4) moves its outputs a little.
        tolerance=2e-3 if name == "noisy_batch" else 1e-4,
    )


@pytest.fixture(scope="module")
def saved_and_loaded(tmp_path_factory):
    """Every registry norm in a model, with trained-like weights, saved to
    `.keras` and loaded in one fresh process (one process for all norms)."""
    x = contract.random_inputs(SHAPE)
    models, layers = {}, {}
    for name in filter(_available, CASES):
        inputs = keras.Input(SHAPE[1:])
        layer = _factory(name)(name="norm")
        model = keras.Model(inputs, layer(inputs))
        contract.randomize_weights(layer, seed=7)
        models[name], layers[name] = model, layer
    loaded = contract.load_in_fresh_process(
        models, x, tmp_path_factory.mktemp("keras_files"), "norm"
    )
    expected = {
        name: to_numpy(model(x, training=False))
        for name, model in models.items()
    }
    return layers, expected, loaded


@pytest.mark.parametrize("name", NAMES)
def test_keras_file_loads_in_fresh_process(name, saved_and_loaded):
    layers, expected, loaded = saved_and_loaded
    layer = layers[name]
    assert loaded[name]["class"] == type(layer).__name__
    assert loaded[name]["config"] == contract.json_round_trip(
        layer.get_config()
    )
    np.testing.assert_allclose(
        np.asarray(loaded[name]["outputs"], np.float32),
        expected[name],
        rtol=1e-6,
        atol=1e-6,
    )
