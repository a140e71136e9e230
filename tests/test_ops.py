import keras
import numpy as np
import pytest
from keras import ops

from keras_seqnorm import ops as norm_ops
from tests.helpers import gradients
from tests.helpers import to_numpy


@pytest.mark.parametrize("batch, groups", [(8, 4), (10, 4), (3, 8), (7, 7)])
def test_ghost_batch_ids_follow_array_split(batch, groups):
    count = norm_ops.num_ghost_batches(batch, groups_m=groups)
    ids = to_numpy(norm_ops.ghost_batch_ids(batch, count))
    expected = np.concatenate(
        [np.full(len(part), i) for i, part in enumerate(
            np.array_split(np.arange(batch), groups)) if len(part)]
    )
    np.testing.assert_array_equal(ids, expected)


def test_num_ghost_batches_from_ghost_batch_size():
    assert norm_ops.num_ghost_batches(10, ghost_batch_size=4) == 3
    assert norm_ops.num_ghost_batches(8, ghost_batch_size=4) == 2
    assert norm_ops.num_ghost_batches(3, groups_m=8) == 3


@pytest.mark.parametrize("axis", [-1, 1])
def test_sample_channel_moments(axis):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(4, 3, 5, 6)).astype("float32")
    channel_axis = norm_ops.resolve_axis(axis, 4)
    count, mean, variance = norm_ops.sample_channel_moments(x, channel_axis)
    moved = np.moveaxis(x.astype(np.float64), channel_axis, -1)
    flat = moved.reshape(4, -1, moved.shape[-1])
    np.testing.assert_allclose(to_numpy(mean), flat.mean(1), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(variance), flat.var(1), rtol=1e-4)
    np.testing.assert_array_equal(
        to_numpy(count), np.full(mean.shape, flat.shape[1])
    )


def test_shifted_moments_are_accurate_far_from_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(1e4, 1.0, size=(2, 64, 3)).astype("float32")
    _, _, variance = norm_ops.sample_channel_moments(x, 2)
    np.testing.assert_allclose(
        to_numpy(variance), x.astype(np.float64).var(1), rtol=1e-3
    )


@pytest.mark.parametrize("axis", [-1, 1])
def test_shifted_moments_variance_is_taken_around_the_mean(axis):
    # Each slice is shifted by its first element; here that element is 40
    # standard deviations from the slice's mean. E[(x - s)^2] - E[x - s]^2
    # cancelled about three digits of float32 there (relative error 2e-5),
    # and the mean, s + E[x - s], rounded to the size of x - s (error
    # 2.6e-5 of a standard deviation); two passes, as BatchNormalization
    # takes them, do neither. Against float64 NumPy.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    x[:, 0, 0, :] = 40.0
    x64 = x.astype(np.float64)
    if axis == 1:
        x = np.moveaxis(x, -1, 1)
    channel_axis = norm_ops.resolve_axis(axis, 4)
    _, mean, variance = norm_ops.sample_channel_moments(x, channel_axis)
    flat = x64.reshape(4, -1, 3)
    np.testing.assert_allclose(to_numpy(variance), flat.var(1), rtol=2e-6)
    np.testing.assert_allclose(to_numpy(mean), flat.mean(1), atol=5e-7)


@pytest.mark.parametrize("axis, loc", [(-1, 3.0), (1, 3.0), (-1, 1e4)])
def test_shifted_moments_gradient(axis, loc):
    # The custom gradient against the analytic one in float64:
    # d/dx sum(a * mean + b * var) = a / n + 2 b (x - mean) / n.
    rng = np.random.default_rng(3)
    x = rng.normal(loc, 2.0, size=(4, 5, 6, 3)).astype("float32")
    channel_axis = norm_ops.resolve_axis(axis, 4)
    axes = norm_ops.reduction_axes(4, channel_axis)
    channels = x.shape[channel_axis]
    a = rng.normal(size=(4, channels)).astype("float32")
    b = rng.normal(size=(4, channels)).astype("float32")

    def objective(x):
        mean, variance = norm_ops.shifted_moments(x, channel_axis)
        return ops.sum(mean * ops.convert_to_tensor(a)
                       + variance * ops.convert_to_tensor(b))

    (grad,) = gradients(objective, x)
    x64 = x.astype(np.float64)
    n = x.size / (4 * channels)
    shape = [4] + [channels if d == channel_axis else 1 for d in (1, 2, 3)]
    mean = x64.mean(axis=tuple(axes), keepdims=True)
    expected = (a.reshape(shape) + 2 * b.reshape(shape) * (x64 - mean)) / n
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape, axis", [
    ((4, 5, 6, 3), -1), ((4, 3, 5, 6), 1), ((4, 3), -1),
])
@pytest.mark.parametrize("with_offset", [True, False])
def test_apply_affine_gradients(shape, axis, with_offset):
    # The custom gradient of (x - centre) * scale + offset, all four
    # arguments, against the analytic one in float64.
    rng = np.random.default_rng(4)
    channel_axis = norm_ops.resolve_axis(axis, len(shape))
    channels = shape[channel_axis]
    x = rng.normal(2.0, 1.0, size=shape).astype("float32")
    centre = rng.normal(size=(4, channels)).astype("float32")
    scale = rng.normal(size=(4, channels)).astype("float32")
    offset = rng.normal(size=(channels,)).astype("float32")
    w = rng.normal(size=shape).astype("float32")

    def objective(x, centre, scale, offset):
        out = norm_ops.apply_affine(
            x, centre, scale, offset if with_offset else None, channel_axis
        )
        return ops.sum(out * ops.convert_to_tensor(w))

    grads = gradients(objective, x, centre, scale, offset)
    bshape = [4] + [
        channels if d == channel_axis else 1 for d in range(1, len(shape))
    ]
    axes = tuple(norm_ops.reduction_axes(len(shape), channel_axis))
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    c64 = centre.astype(np.float64).reshape(bshape)
    per_slice = w64.sum(axis=axes).reshape(4, channels)
    expected = [
        w64 * scale.reshape(bshape),
        -per_slice * scale,
        (w64 * (x64 - c64)).sum(axis=axes).reshape(4, channels),
        per_slice.sum(axis=0),
    ]
    outputs = to_numpy(norm_ops.apply_affine(
        x, centre, scale, offset if with_offset else None, channel_axis
    ))
    np.testing.assert_allclose(
        outputs,
        (x64 - c64) * scale.reshape(bshape)
        + (offset.reshape([1] + bshape[1:]) if with_offset else 0.0),
        rtol=1e-5, atol=1e-5,
    )
    if not with_offset:  # unused: no gradient, or a zero one
        grads, expected = grads[:3], expected[:3]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fusion_barrier_is_the_identity():
    t = np.random.default_rng(5).normal(size=(6, 4)).astype("float32")
    np.testing.assert_array_equal(to_numpy(norm_ops.fusion_barrier(t)), t)
    both = norm_ops.fusion_barrier(t, 2 * t)
    np.testing.assert_array_equal(to_numpy(both[1]), 2 * t)


def test_combination_is_exact():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 7, 4))
    count, mean, variance = norm_ops.sample_channel_moments(
        x.astype("float32"), 2
    )
    total, ghost_mean, ghost_variance = norm_ops.ghost_batch_moments(
        count, mean, variance, groups_m=3
    )
    for i, index in enumerate(np.array_split(np.arange(10), 3)):
        values = x[index].reshape(-1, 4)
        for row in index:
            np.testing.assert_allclose(
                to_numpy(ghost_mean)[row], values.mean(0), atol=1e-5
            )
            np.testing.assert_allclose(
                to_numpy(ghost_variance)[row], values.var(0), atol=1e-5
            )
            np.testing.assert_array_equal(to_numpy(total)[row], len(values))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="unknown batch sizes only exist in TensorFlow graphs",
)
def test_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    from keras_seqnorm.layers import SequentialNormalization
    from tests.helpers import seq_norm_reference

    layer = SequentialNormalization(groups_c=2, groups_m=4)
    layer.build((None, 3, 4))
    call = tf.function(
        lambda x: layer(x, training=True),
        input_signature=[tf.TensorSpec((None, 3, 4), tf.float32)],
    )
    rng = np.random.default_rng(3)
    for batch in (10, 3):
        x = rng.normal(size=(batch, 3, 4)).astype("float32")
        expected, _, _ = seq_norm_reference(x, -1, 2, 4)
        np.testing.assert_allclose(
            call(x).numpy(), expected, rtol=1e-4, atol=1e-4
        )


def test_fusion_barrier_gradient_is_the_identity_under_xla():
    t = np.random.default_rng(6).normal(size=(6, 4)).astype("float32")
    w = np.arange(24, dtype="float32").reshape(6, 4)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def grad(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                a, b = norm_ops.fusion_barrier(t, 2.0 * t)
                total = tf.reduce_sum((a + b) * w)
            return tape.gradient(total, t)

        got = to_numpy(grad(tf.constant(t)))
    else:
        (got,) = gradients(
            lambda t: ops.sum(
                ops.add(*norm_ops.fusion_barrier(t, 2.0 * t))
                * ops.convert_to_tensor(w)
            ),
            t,
        )
    np.testing.assert_allclose(got, 3.0 * w)


def test_sequential_moments_is_a_named_tuple():
    x = np.random.default_rng(7).normal(size=(8, 3, 4)).astype("float32")
    ghost = norm_ops.sequential_moments(x, 2, groups_m=2)
    assert isinstance(ghost, norm_ops.SequentialMoments)
    assert ghost.group_mean is None and ghost.group_inv_std is None
    assert all(t.shape == (8, 4) for t in (ghost.count, ghost.mean,
                                           ghost.variance, ghost.sample_count))
    np.testing.assert_array_equal(to_numpy(ghost.count), 12.0)
    seq = norm_ops.sequential_moments(x, 2, groups_c=2, groups_m=2,
                                      training=False)
    assert seq.count is None and seq.mean is None and seq.variance is None
    assert seq.group_mean.shape == seq.group_inv_std.shape == (8, 4)


def _layer_inputs(rng, shape, axis, loc, scale):
    # (channel_axis, channels, x, gamma, an upstream gradient).
    channel_axis = norm_ops.resolve_axis(axis, len(shape))
    channels = shape[channel_axis]
    x = rng.normal(loc, scale, size=shape).astype("float32")
    gamma = rng.uniform(0.5, 1.5, size=channels).astype("float32")
    return channel_axis, channels, x, gamma, rng.normal(
        size=shape).astype("float32")


def _training(x, gamma, beta, channel_axis, groups_c, groups_m, mask=None):
    # One training call, moving statistics zeros and ones, momentum 0.9.
    channels = x.shape[channel_axis]
    return norm_ops.sequential_normalization(
        x, gamma, beta, channel_axis=channel_axis, groups_c=groups_c,
        groups_m=groups_m, epsilon=1e-3,
        moving_mean=ops.zeros((channels,)),
        moving_variance=ops.ones((channels,)), momentum=0.9, mask=mask,
    )


@pytest.mark.parametrize("groups_c", [None, 2])
@pytest.mark.parametrize("shape, axis, groups_m", [
    ((8, 5, 4), -1, 3), ((9, 4, 3, 2), 1, 4), ((7, 4), -1, 2),
    ((6, 3, 3, 4), -1, 6), ((8, 5, 4), -1, 4), ((8, 4, 3, 2), 1, 2),
    ((8, 4), -1, 4),
])
def test_one_custom_gradient_equals_autodiff_step_by_step(groups_c, shape,
                                                          axis, groups_m):
    # Unmasked training takes one hand-written gradient for the whole
    # layer; an all-true mask takes the step-by-step path (two custom
    # gradients, autodiff between them). Same outputs, statistics and
    # gradients for x, gamma and beta.
    rng = np.random.default_rng(8)
    channel_axis, channels, x, gamma, w = _layer_inputs(
        rng, shape, axis, loc=3.0, scale=2.0
    )
    beta = rng.normal(size=channels).astype("float32")
    # All true: a Keras mask covers every axis but the last.
    mask = np.ones(shape[:-1], bool)

    def run(mask):
        def train(x, gamma, beta):
            return _training(x, gamma, beta, channel_axis, groups_c,
                             groups_m, mask)

        def objective(x, gamma, beta):
            outputs = train(x, gamma, beta).outputs
            return ops.sum(outputs * ops.convert_to_tensor(w))

        result = train(x, gamma, beta)
        values = [to_numpy(t) for t in result]
        return values + gradients(objective, x, gamma, beta)

    fused, stepwise = run(None), run(mask)
    for got, want in zip(fused, stepwise):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("shape, axis, groups_m", [
    ((16, 4, 4, 3), -1, 4), ((16, 3, 4, 4), 1, 2), ((15, 4, 4, 3), -1, 4),
    ((16, 3), -1, 4),
])
def test_ghost_norm_gradient_far_from_zero(shape, axis, groups_m):
    # Inputs of mean 1e4 and standard deviation 1: the gradients of x and
    # gamma against float64 NumPy, dx = r (g - E[g] - x_hat E[g x_hat]),
    # g = dy gamma, means over each ghost batch.
    channel_axis, channels, x, gamma, dy = _layer_inputs(
        np.random.default_rng(3), shape, axis, loc=1e4, scale=1.0
    )

    def objective(x, gamma):
        result = norm_ops.sequential_normalization(
            x, gamma, None, channel_axis=channel_axis, groups_m=groups_m,
            epsilon=1e-3,
        )
        return ops.sum(result.outputs * ops.convert_to_tensor(dy))

    grad_x, grad_gamma = gradients(objective, x, gamma)
    x64, dy64 = (
        np.moveaxis(t.astype(np.float64), channel_axis, -1) for t in (x, dy)
    )
    want_x, want_gamma = np.zeros_like(x64), np.zeros(channels)
    for index in np.array_split(np.arange(shape[0]), groups_m):
        values = x64[index].reshape(-1, channels)
        upstream = dy64[index].reshape(-1, channels) * gamma
        inv_std = 1.0 / np.sqrt(values.var(0) + 1e-3)
        normed = (values - values.mean(0)) * inv_std
        want = inv_std * (
            upstream - upstream.mean(0)
            - normed * (upstream * normed).mean(0)
        )
        want_x[index] = want.reshape(x64[index].shape)
        want_gamma += (dy64[index].reshape(-1, channels) * normed).sum(0)
    want_x = np.moveaxis(want_x, -1, channel_axis)
    # float32 holds a mean of 1e4 to about 1e-3: x - mean is no closer.
    np.testing.assert_allclose(grad_x, want_x, atol=5e-3)
    np.testing.assert_allclose(grad_gamma, want_gamma, rtol=1e-3, atol=1e-2)



@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's whole ghost batches"
)
def test_whole_ghost_batch_variance_is_taken_around_the_mean():
    # GhostNorm on JAX CPUs shifts each ghost batch's sums by its first
    # value (`_WholeGhostBatches`). Here that value is 40 standard
    # deviations from the mean: E[(x - s)^2] - E[x - s]^2 cancelled about
    # three digits of float32 (relative error 1.9e-5, and Keras' own
    # BatchNormalization suite failed on it now and then); the sum of
    # squares around the mean does not. Against float64 NumPy.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 16, 16, 4)).astype("float32")
    x[::4, 0, 0, :] = 40.0
    result = norm_ops.sequential_normalization(
        x, None, None, channel_axis=3, groups_m=4, epsilon=1e-3,
    )
    ghosts = x.astype(np.float64).reshape(4, -1, 4)
    np.testing.assert_allclose(
        to_numpy(result.variance), ghosts.var(axis=1).mean(0), rtol=2e-6
    )
    np.testing.assert_allclose(
        to_numpy(result.mean), ghosts.mean(axis=1).mean(0), atol=1e-6
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's platforms")
def test_compiling_for_picks_the_programs_of_its_platform():
    # GhostNorm with even ghost batches sums whole ghost batches on JAX
    # CPUs only; inside `compiling_for("gpu")` it traces the GPUs' program,
    # and after the context (left by an error too) the default backend's.
    import jax

    x = ops.zeros((16, 2, 2, 8))
    kinds = []

    def kind():
        fused = norm_ops._fused_normalization(x, 3, None, 8, None, 1e-3)
        kinds.append(type(fused).__name__)

    assert jax.default_backend() == "cpu"
    kind()
    with norm_ops.compiling_for("gpu"):
        kind()
        with norm_ops.compiling_for("cpu"):
            kind()
        kind()
    with pytest.raises(RuntimeError):
        with norm_ops.compiling_for("cuda"):
            kind()
            raise RuntimeError
    kind()
    assert kinds == ["_WholeGhostBatches", "_FusedNormalization",
                     "_WholeGhostBatches", "_FusedNormalization",
                     "_FusedNormalization", "_WholeGhostBatches"]


def test_compiling_for_names_a_platform_it_does_not_know():
    with pytest.raises(ValueError, match="Received: platform='h200'"):
        with norm_ops.compiling_for("h200"):
            pass


@pytest.mark.parametrize("width", [1, 2, 3, 5, 6, 7, 8, 13, 32])
def test_pairwise_sum_is_the_sum_over_the_last_axis(width):
    t = np.random.default_rng(width).normal(size=(3, 2, width))
    np.testing.assert_allclose(
        to_numpy(norm_ops._pairwise_sum(ops.convert_to_tensor(t))),
        t.sum(-1), rtol=1e-6, atol=1e-6,
    )


JAX_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's platforms"
)


@JAX_ONLY
def test_groups_are_summed_by_adds_on_gpus_only():
    # Groups of up to 32 channels: elementwise adds in the GPUs' programs
    # (XLA fuses them with what follows), one reduce elsewhere.
    import jax

    def primitives(channels, platform):
        groups = norm_ops._ChannelGroups(channels, 4, xla=True)
        with norm_ops.compiling_for(platform):
            jaxpr = jax.make_jaxpr(groups.sum)(ops.zeros((8, channels)))
        return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}

    assert "reduce_sum" in primitives(32, "cpu")
    assert "reduce_sum" not in primitives(32, "cuda")
    assert "add" in primitives(32, "cuda")
    assert "reduce_sum" in primitives(160, "cuda")


@JAX_ONLY
@pytest.mark.parametrize("groups_c, shape, axis, groups_m", [
    (4, (16, 3, 3, 32), -1, 4), (4, (15, 3, 3, 24), -1, 4),
    (2, (12, 10, 3, 3), 1, 3), (1, (8, 40, 2, 2), 1, 2),
    (None, (16, 3, 3, 8), -1, 4), (None, (14, 8, 3, 3), 1, 4),
])
def test_gpu_programs_equal_the_reference_on_cpu(groups_c, shape, axis,
                                                 groups_m):
    # The programs traced for GPUs (group sums by adds, the outputs' sums
    # as one stacked reduction), run here on the CPU: the outputs against
    # NumPy, and outputs, moving statistics and gradients of x, gamma and
    # beta against the CPUs' programs.
    import jax

    from tests.helpers import ghost_norm_reference
    from tests.helpers import seq_norm_reference

    rng = np.random.default_rng(5)
    channel_axis, channels, x, gamma, w = _layer_inputs(
        rng, shape, axis, loc=3.0, scale=2.0
    )
    beta = rng.normal(size=channels).astype("float32")

    def step(x, gamma, beta):
        def objective(x, gamma, beta):
            result = _training(x, gamma, beta, channel_axis, groups_c,
                               groups_m)
            loss = ops.sum(result.outputs * ops.convert_to_tensor(w))
            return loss, (result.outputs, result.moving_mean,
                          result.moving_variance)

        grads, values = jax.grad(objective, (0, 1, 2), has_aux=True)(
            x, gamma, beta
        )
        return values + grads

    with norm_ops.compiling_for("gpu"):
        on_gpu = [to_numpy(t) for t in jax.jit(step)(x, gamma, beta)]
    on_cpu = [to_numpy(t) for t in jax.jit(step)(x, gamma, beta)]
    for got, want in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if groups_c is None:
        normed, mean, variance = ghost_norm_reference(
            x, axis, groups_m, 1e-3
        )
    else:
        normed, mean, variance = seq_norm_reference(
            x, axis, groups_c, groups_m, 1e-3
        )
    scale = np.reshape(gamma, norm_ops.broadcast_shape(
        len(shape), channel_axis, channels))
    offset = np.reshape(beta, scale.shape)
    want = (normed * scale + offset, 0.1 * mean, 0.9 + 0.1 * variance)
    for got, expected in zip(on_gpu, want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _fused_programs_against_the_reference(shape, groups_c, groups_m,
                                          input_dtype="float32"):
    # SeqNorm's fused path jit-compiled on JAX (CPU): the programs it took
    # (`ops._FusedNormalization`), then outputs and moving statistics
    # against NumPy and gradients of x, gamma and beta against the
    # step-by-step path (an all-true mask).
    import jax

    from tests.helpers import seq_norm_reference

    axis = -1 if shape[-1] != 3 else 1
    rng = np.random.default_rng(6)
    channel_axis, channels, x, gamma, w = _layer_inputs(
        rng, shape, axis, loc=3.0, scale=2.0
    )
    beta = rng.normal(size=channels).astype("float32")
    taken = []

    def fused(x):
        taken.append(norm_ops._fused_normalization(
            x, channel_axis, groups_c, groups_m, None, 1e-3, input_dtype
        ))
        return x

    jax.jit(fused)(x)

    def step(mask):
        def objective(x, gamma, beta):
            result = _training(x, gamma, beta, channel_axis, groups_c,
                               groups_m, mask)
            loss = ops.sum(result.outputs * ops.convert_to_tensor(w))
            return loss, (result.outputs, result.moving_mean,
                          result.moving_variance)

        grads, values = jax.jit(
            jax.grad(objective, (0, 1, 2), has_aux=True)
        )(x, gamma, beta)
        return [to_numpy(t) for t in values + grads]

    got, stepwise = step(None), step(np.ones(shape[:-1], bool))
    for value, want in zip(got, stepwise):
        np.testing.assert_allclose(value, want, rtol=2e-4, atol=2e-5)
    normed, mean, variance = seq_norm_reference(
        x, axis, groups_c, groups_m, 1e-3
    )
    scale = np.reshape(gamma, norm_ops.broadcast_shape(
        len(shape), channel_axis, channels))
    want = (normed * scale + np.reshape(beta, scale.shape), 0.1 * mean,
            0.9 + 0.1 * variance)
    for value, expected in zip(got, want):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
    return taken


@JAX_ONLY
@pytest.mark.parametrize("shape, groups_c, groups_m, input_dtype, inline", [
    ((16, 3, 3, 16), 4, 4, "float32", True),
    ((14, 3, 3, 16), 2, 4, "float32", True),
    ((16, 3, 3, 8), 4, 4, "float32", True),
    ((16, 3, 3, 16), 8, 4, "float32", False),
    ((16, 3, 3, 32), 4, 4, "float32", False),
    ((16, 3, 3, 16), 4, 4, "bfloat16", False),
    ((16, 16, 3, 3), 4, 4, "float32", False),
])
def test_seqnorm_inline_programs_equal_the_reference(shape, groups_c,
                                                     groups_m, input_dtype,
                                                     inline):
    # SeqNorm on JAX CPUs, float32 with 8 or 16 channels last: no fusion
    # barriers (`ops._seqnorm_inline`).
    (programs,) = _fused_programs_against_the_reference(
        shape, groups_c, groups_m, input_dtype
    )
    assert (programs.barriers, programs.ghost_terms_apart) == (
        not inline, not inline
    )


@JAX_ONLY
@pytest.mark.parametrize("shape, groups_c, groups_m, lanes", [
    ((16, 2, 2, 128), 4, 4, 16),
    ((14, 2, 2, 128), 2, 4, 16),
    ((12, 2, 2, 160), 4, 3, 8),
    ((8, 2, 2, 2048), 2, 2, 16),
    ((16, 64, 3, 3), 2, 4, 16),
    ((16, 3, 3, 32), 4, 4, None),
    ((16, 3, 3, 48), 2, 5, 8),
])
def test_seqnorm_group_programs_on_cpus_equal_the_reference(
        shape, groups_c, groups_m, lanes):
    # SeqNorm on JAX CPUs but `_seqnorm_inline`: the GroupNorm stage by
    # group, its sums with vectorized partial sums first where the group's
    # width allows (`ops._channel_groups`; 1024 channels a group: partial
    # sums over two major axes), even and uneven ghost batches.
    (programs,) = _fused_programs_against_the_reference(
        shape, groups_c, groups_m
    )
    groups = programs.groups
    assert programs.ghost_terms_apart and groups.by_group
    assert groups.lanes == lanes


@pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="the fused programs are TensorFlow's and JAX's",
)
@pytest.mark.parametrize("policy, input_dtype", [
    ("float32", "float32"), ("mixed_bfloat16", "bfloat16"),
])
def test_the_layer_computes_in_float32_and_names_its_input_dtype(
        monkeypatch, policy, input_dtype):
    # The layer hands its inputs to `sequential_normalization` uncast, with
    # compute_dtype="float32": the fused programs see the dtype the inputs
    # came in (`ops._seqnorm_inline` keeps its barriers for bfloat16) and
    # compute in float32, the result equal to the cast inputs'.
    from keras_seqnorm.layers import SequentialNormalization

    seen = []
    inline = norm_ops._seqnorm_inline

    def spy(x, channel_axis, groups_c, dtype):
        seen.append(dtype)
        return inline(x, channel_axis, groups_c, dtype)

    monkeypatch.setattr(norm_ops, "_seqnorm_inline", spy)
    x = np.random.default_rng(2).normal(size=(8, 2, 2, 16))
    layer = SequentialNormalization(groups_c=4, groups_m=2, dtype=policy)
    outputs = layer(ops.cast(x, input_dtype), training=True)
    assert seen == [input_dtype]
    assert keras.backend.standardize_dtype(outputs.dtype) == input_dtype
    cast = ops.cast(ops.cast(x, input_dtype), "float32")
    direct = norm_ops.sequential_normalization(
        ops.cast(x, input_dtype), channel_axis=3, groups_c=4, groups_m=2,
        compute_dtype="float32",
    )
    want = norm_ops.sequential_normalization(
        cast, channel_axis=3, groups_c=4, groups_m=2,
    )
    assert keras.backend.standardize_dtype(direct.outputs.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(direct.outputs),
                               to_numpy(want.outputs), rtol=1e-6, atol=1e-6)
