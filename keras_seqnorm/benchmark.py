"""Speed of the layers against `keras.layers.BatchNormalization`.

`keras_seqnorm.benchmark.run(...)` (also `keras-seqnorm bench`, `make bench`
and `python benchmarks/run.py`, which only parse flags and call it) times
fwd+bwd through each normalization, compiled with XLA on the active backend
(TensorFlow or JAX), with samples interleaved across the implementations in
one process, and reports medians and ratios to BatchNormalization on the
same shape and dtype. Beside the times: the number of kernels of one
compiled fwd+bwd call (`kernel_count`), XLA's estimate of its memory
traffic in passes over the input (JAX), and on TensorFlow the same fwd+bwd
in a `tf.function` without XLA (graph mode). It also times a whole
training step of a model with each norm. Nothing is written unless an
output path is given.

Example:

>>> from keras_seqnorm import benchmark
>>> result = benchmark.run(shapes=[(16, 4, 4, 16)], dtypes=["float32"],
...                        iters=1, samples=1, model="")
>>> print(result.markdown())  # doctest: +SKIP
"""

import dataclasses
import inspect
import itertools
import math
import os
import platform
import re
import statistics
import sys
import time

import keras
import numpy as np
from keras import ops

from keras_seqnorm import ops as norm_ops
from keras_seqnorm import utils
from keras_seqnorm import validation
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from keras_seqnorm.norms import group_kwargs

# NHWC activations of WRN-28-10 (128x32x32x160 to 128x8x8x640), ResNet-50
# (64x56x56x256), small tensors where launch costs show (64x8x8x32,
# 32x4x4x512) and the digits demo's SimpleCNN at batch 64 (64x16x16x16,
# 64x8x8x32).
DEFAULT_SHAPES = (
    (128, 32, 32, 160),
    (128, 16, 16, 320),
    (128, 8, 8, 640),
    (64, 56, 56, 256),
    (64, 16, 16, 16),
    (64, 8, 8, 32),
    (32, 4, 4, 512),
)
GROUPS_C, GROUPS_M = 4, 8


class TwoStageSequentialNormalization(keras.layers.Layer):
    """SeqNorm as the paper writes it: GroupNorm, then GhostNorm (Figure A1).

    The reference formulation that the fused layer is measured against: two
    full normalizations, each a reshape, moments and an elementwise pass.
    Channels last, batch divisible by `groups_m`; no moving statistics.
    """

    def __init__(self, groups_c=GROUPS_C, groups_m=GROUPS_M, epsilon=1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        self.groups_c = groups_c
        self.groups_m = groups_m
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros")

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        shape = ops.shape(x)
        channels = shape[-1]
        grouped = ops.reshape(
            x, (shape[0], -1, self.groups_c, channels // self.groups_c)
        )
        mean, variance = ops.moments(grouped, axes=(1, 3), keepdims=True)
        y = (grouped - mean) * ops.rsqrt(variance + self.epsilon)
        ghost = ops.reshape(y, (self.groups_m, -1, channels))
        mean, variance = ops.moments(ghost, axes=(1,), keepdims=True)
        z = (ghost - mean) * ops.rsqrt(variance + self.epsilon)
        z = ops.reshape(z, shape) * self.gamma + self.beta
        return ops.cast(z, self.compute_dtype)


def _layers(fused=None, axis=-1, groups_m=GROUPS_M):
    # BatchNormalization, GhostNorm and SeqNorm (`fused` passed on).
    return {
        "batch": lambda dtype: keras.layers.BatchNormalization(
            axis=axis, dtype=dtype
        ),
        "ghost": lambda dtype: GhostNormalization(
            groups_m=groups_m, axis=axis, dtype=dtype, fused=fused
        ),
        "sequential": lambda dtype: SequentialNormalization(
            groups_c=GROUPS_C, groups_m=groups_m, axis=axis, dtype=dtype,
            fused=fused,
        ),
    }


def _implementations(include_group=True):
    impls = _layers()
    impls["two_stage"] = lambda dtype: TwoStageSequentialNormalization(
        dtype=dtype
    )
    if include_group:
        impls["group"] = lambda dtype: keras.layers.GroupNormalization(
            groups=GROUPS_C, dtype=dtype
        )
    return impls


def _graph_implementations():
    # TensorFlow graph mode: the layers' own compiled call (`fused=None`)
    # and their plain TensorFlow ops (`fused=False`).
    plain = _layers(fused=False)
    return {
        **_layers(),
        "ghost_plain": plain["ghost"],
        "sequential_plain": plain["sequential"],
    }


# HLO instructions of a compiled computation that launch no kernel.
_NOT_KERNELS = frozenset(
    ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
)


def _opcode(instruction):
    # "shape opcode(operands), attributes", the shape possibly a tuple.
    if instruction.startswith("("):
        depth = 0
        for end, char in enumerate(instruction):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
    else:
        end = instruction.index(" ")
    rest = instruction[end + 1:].lstrip()
    return rest[: rest.index("(")]


def kernel_count(hlo_text):
    """The kernels of an optimized XLA HLO module, from its text.

    The instructions of the ENTRY computation other than parameter,
    constant, tuple, get-tuple-element and bitcast: after XLA's fusion each
    is one kernel (a fusion, a custom call, a copy). On a GPU each costs a
    launch however little it computes.
    """
    lines = hlo_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
    count = 0
    for line in lines[start + 1:]:
        if line.startswith("}"):
            break
        match = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+ = (.*)", line)
        if match and _opcode(match.group(1)) not in _NOT_KERNELS:
            count += 1
    return count


def _fwd_bwd_tensorflow(layer, x, dy, jit_compile=True):
    import tensorflow as tf

    variables = layer.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=True)
        # The output is returned too, so XLA cannot drop the forward pass.
        return [out] + tape.gradient(out, [x] + variables,
                                     output_gradients=dy)

    def run():
        return step(x, dy)

    def sync(result):
        return result[0].numpy().ravel()[0]

    info = {}
    if jit_compile:
        hlo = step.experimental_get_compiler_ir(x, dy)(stage="optimized_hlo")
        info["kernels"] = kernel_count(hlo)
    return run, sync, info


def _jax_step(layer):
    # The jitted fwd+bwd of `layer`, `step(trainable, non_trainable, x,
    # dy)`, and the values of its trainable and non-trainable variables.
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    takes_training = "training" in inspect.signature(layer.call).parameters
    kwargs = {"training": True} if takes_training else {}

    @jax.jit
    def step(trainable, non_trainable, x, dy):
        def forward(trainable, x):
            return layer.stateless_call(
                trainable, non_trainable, x, **kwargs
            )

        out, vjp, updated = jax.vjp(forward, trainable, x, has_aux=True)
        # The output and the updated moving statistics are returned too,
        # so XLA drops neither the forward pass nor the update.
        return out, vjp(dy), updated

    return step, trainable, non_trainable


def _jax_info(compiled):
    # Scratch memory, XLA's estimate of the bytes moved and the kernels of
    # a compiled JAX computation.
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
        cost = cost[0] if cost else {}
    return {
        "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "bytes_accessed": cost.get("bytes accessed"),
        "kernels": kernel_count(compiled.as_text()),
    }


def _fwd_bwd_jax(layer, x, dy):
    import jax

    step, trainable, non_trainable = _jax_step(layer)

    def run():
        return step(trainable, non_trainable, x, dy)

    def sync(result):
        return jax.block_until_ready(result)

    compiled = step.lower(trainable, non_trainable, x, dy).compile()
    return run, sync, _jax_info(compiled)


def fwd_bwd_step(layer, x, dy, jit_compile=True):
    """A compiled fwd+bwd call of `layer` at `x` with output cotangent `dy`.

    Returns `(run, sync, info)`: `run()` makes one call, `sync(result)`
    waits for it, and `info` holds the number of kernels of the compiled
    call (`kernels`, see `kernel_count`) and, where the backend reports
    them (JAX), XLA's scratch memory for the call (`temp_bytes`) and its
    estimate of the bytes read and written (`bytes_accessed`). The call
    includes the update of the moving statistics. With
    `jit_compile=False` (TensorFlow only) the call is a `tf.function`
    without XLA, and `info` is empty.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _fwd_bwd_tensorflow(layer, x, dy, jit_compile)
    if backend == "jax" and jit_compile:
        return _fwd_bwd_jax(layer, x, dy)
    raise ValueError(
        "The benchmark supports the tensorflow backend, and the jax backend "
        f"with jit_compile=True. Received: KERAS_BACKEND={backend}, "
        f"jit_compile={jit_compile}"
    )


def _check_out(name, path):
    """`path` as a string; a ValueError naming argument `name` if it ends
    in .md, the extension of the table written beside the JSON."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() == ".md":
        raise ValueError(
            f"Argument `{name}` names the JSON file, and the markdown tables "
            "are written beside it with the extension .md; it cannot end in "
            f".md itself. Received: {name}={path}"
        )
    return path


def _check_dtypes(dtypes):
    for dtype in dtypes:
        validation.choice("dtypes", dtype, validation.BENCHMARK_DTYPES)


def _channels_first(shape):
    return (shape[0], shape[-1]) + tuple(shape[1:-1])


def _compiled_info(layer, x, sharding):
    # `fwd_bwd_step`'s info (x as the cotangent too), compiled for the
    # devices of `sharding` (JAX) from abstract arguments: nothing runs.
    if sharding is None:
        return fwd_bwd_step(layer, x, x)[2]
    import jax

    step, trainable, non_trainable = _jax_step(layer)
    args = jax.tree_util.tree_map(
        lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=sharding),
        (trainable, non_trainable, x, x),
    )
    platform = next(iter(sharding.device_set)).platform
    with norm_ops.compiling_for(platform):
        return _jax_info(step.lower(*args).compile())


def _check_sharding(sharding):
    backend = keras.backend.backend()
    if sharding is not None and backend != "jax":
        raise ValueError(
            "Argument `sharding` places JAX arrays and needs the jax "
            f"backend. Received: sharding={sharding!r} with "
            f"KERAS_BACKEND={backend}"
        )
    if sharding is not None and not hasattr(sharding, "device_set"):
        raise ValueError(
            "Argument `sharding` must be a `jax.sharding.Sharding`. "
            f"Received: sharding={sharding!r}"
        )


def kernel_counts(shapes=DEFAULT_SHAPES, dtypes=("float32", "bfloat16"),
                  groups_m=(GROUPS_M, GROUPS_M - 1), sharding=None):
    """Kernels of each layer's compiled fwd+bwd, without timing anything.

    For every shape (given channels last) and dtype, channels last and
    first: BatchNormalization, and GhostNorm and SeqNorm (G_C = 4) with
    each G_M of `groups_m` (the default, 8 and 7, gives even and uneven
    ghost batches for every batch size that 8 divides and 7 does not). One
    compile each, no run: on a GPU this counts the GPU's kernels
    (launches).

    With a JAX `sharding`, each fwd+bwd is compiled for its devices, which
    need not be this machine's: for instance a GPU described by
    `jax.experimental.topologies` (`benchmarks/gpu_kernels.py`). The layers
    then trace the programs they trace for those devices' platform
    (`ops.compiling_for`).

    Returns:
        One row per layer: `kind` `"kernels"`, `shape` (channels last),
        `dtype`, `layout`, `impl`, `groups_m` (`None` for BatchNorm),
        `kernels`, `ratio` (to BatchNormalization's kernels in the same
        shape, dtype and layout) and `passes` (JAX; see `bench_layers`).
    """
    _check_dtypes(dtypes)
    _check_sharding(sharding)
    rows = []
    for shape, dtype in itertools.product(shapes, dtypes):
        policy = "mixed_" + dtype if dtype != "float32" else "float32"
        for layout, axis in (("channels_last", -1), ("channels_first", 1)):
            layer_shape = (
                tuple(shape) if axis == -1 else _channels_first(shape)
            )
            rng = np.random.default_rng(0)
            x = ops.convert_to_tensor(
                rng.normal(size=layer_shape).astype("float32"), dtype=dtype
            )
            layers = [("batch", None, _layers(axis=axis)["batch"])]
            for g in groups_m:
                makers = _layers(axis=axis, groups_m=g)
                layers += [(impl, g, makers[impl])
                           for impl in ("ghost", "sequential")]
            found = []
            for impl, g, make in layers:
                layer = make(policy)
                layer.build(layer_shape)
                info = _compiled_info(layer, x, sharding)
                found.append({
                    "kind": "kernels", "shape": list(shape), "dtype": dtype,
                    "layout": layout, "impl": impl, "groups_m": g,
                    "kernels": info["kernels"], "passes": _passes(info, x),
                })
            for row in found:
                row["ratio"] = row["kernels"] / found[0]["kernels"]
            rows += found
    return rows


def kernel_table(rows):
    """The `kernel_counts` rows as one markdown table."""
    keyed = {}
    for row in rows:
        key = ("x".join(map(str, row["shape"])), row["dtype"], row["layout"])
        keyed.setdefault(key, []).append(row)
    groups = sorted({r["groups_m"] for r in rows if r["groups_m"]},
                    reverse=True)
    each = " / ".join(f"G_M={g}" for g in groups)
    lines = [
        f"| shape (channels last) | dtype | layout | BatchNorm | GhostNorm "
        f"({each}) | SeqNorm ({each}) | most / BatchNorm |",
        "|---|---|---|---|---|---|---|",
    ]
    for (shape, dtype, layout), found in keyed.items():
        counts = {(r["impl"], r["groups_m"]): r["kernels"] for r in found}
        cells = [
            " / ".join(str(counts[(impl, g)]) for g in groups)
            for impl in ("ghost", "sequential")
        ]
        most = max(r["ratio"] for r in found)
        lines.append(
            f"| {shape} | {dtype} | {layout} | {counts[('batch', None)]} | "
            f"{cells[0]} | {cells[1]} | {most:.2f}x |"
        )
    return "\n".join(lines)


# With `iters=None`, each timed sample makes enough calls to last at least
# this long (and at least a minimum number of calls): a GPU call of 0.1 ms
# or a small CPU call of 0.3 ms is then timed over many calls, not five.
SAMPLE_SECONDS = 0.02
_MOST_CALLS = 10000


def calls_per_sample(seconds_per_call, minimum=5, target=SAMPLE_SECONDS):
    """Calls that make one timed sample last at least `target` seconds.

    Args:
        seconds_per_call: The time of one call (of the fastest
            implementation timed together).
        minimum: The fewest calls a sample makes.
        target: The seconds a sample should last at least.

    Returns:
        An int from `minimum` to 10000.
    """
    if seconds_per_call <= 0:
        return _MOST_CALLS
    calls = math.ceil(target / seconds_per_call)
    return max(minimum, min(_MOST_CALLS, calls))


def _time_interleaved(steps, iters, samples, minimum=5):
    """Times each `(run, sync)` of `steps`, samples interleaved.

    Sample `k` times the steps in their order rotated by `k`, so each step
    takes each place in the loop in turn: where a program runs in the loop
    moves its time (two copies of one compiled BatchNorm, JAX CPU, small
    shapes: 0.92-1.06x each other in a fixed order, 0.96-1.02x rotated).

    Returns:
        `(medians, iters)`: the median seconds per call of each step, and
        the calls per sample, `iters` or, with `iters=None`, enough for
        the fastest step to last `SAMPLE_SECONDS` a sample (at least
        `minimum`).
    """
    fastest = math.inf
    for run, sync in steps.values():  # compile and warm up
        sync(run())
        start = time.perf_counter()
        sync(run())
        fastest = min(fastest, time.perf_counter() - start)
    if iters is None:
        iters = calls_per_sample(fastest, minimum)
    names = list(steps)
    times = {name: [] for name in names}
    for sample in range(samples):
        turn = sample % len(names)
        for name in names[turn:] + names[:turn]:
            run, sync = steps[name]
            start = time.perf_counter()
            for _ in range(iters):
                result = run()
            sync(result)
            times[name].append((time.perf_counter() - start) / iters)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return medians, iters


def _peak_memory():
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use")
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"]
    except (RuntimeError, ValueError):
        return None
    return None


def paper_pytorch_seqnorm(x, gamma, beta, groups_c, groups_m, eps=1e-5):
    """The paper's PyTorch SeqNorm: `F.group_norm`, then Figure A1's
    GhostNorm, then the affine. `x` is `(M, C, F)`."""
    import torch.nn.functional as F

    x = F.group_norm(x, groups_c, eps=eps)
    M, C, Fs = x.shape
    x = x.reshape(groups_m, -1, C, Fs)
    mean = x.mean([1, 3], keepdim=True)
    var = x.var([1, 3], unbiased=False, keepdim=True)
    x = (x - mean) / (var + eps).sqrt()
    x = x.reshape(M, C, Fs)
    return x * gamma[:, None] + beta[:, None]


def _torch_steps(x, dy):
    """fwd+bwd of the paper's PyTorch code, eager and `torch.compile`d, on
    the same values (NHWC arrays moved to the paper's `(M, C, F)` layout)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[keras.backend.standardize_dtype(
                 x.dtype)]

    def to_torch(a):
        a = np.asarray(ops.convert_to_numpy(ops.cast(a, "float32")))
        a = np.moveaxis(a, -1, 1).reshape(a.shape[0], a.shape[-1], -1)
        return torch.tensor(a, dtype=dtype, device=device)

    tx, tdy = to_torch(x).requires_grad_(), to_torch(dy)
    channels = tx.shape[1]
    gamma = torch.ones(channels, device=device, requires_grad=True)
    beta = torch.zeros(channels, device=device, requires_grad=True)

    def make(fn):
        def run():
            out = fn(tx, gamma, beta, GROUPS_C, GROUPS_M)
            return torch.autograd.grad(out, (tx, gamma, beta), tdy)

        return run

    def sync(result):
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    compiled = torch.compile(paper_pytorch_seqnorm)
    return {
        "pytorch_paper": (make(paper_pytorch_seqnorm), sync),
        "pytorch_paper_compiled": (make(compiled), sync),
    }


def bench_layers(shapes, dtypes, iters, samples, include_group=True,
                 torch_reference=False, graph_mode=False):
    """Times fwd+bwd of each layer per shape and dtype; returns rows.

    Every implementation of a shape and dtype is timed in one interleaved
    loop: XLA-compiled, and with `graph_mode` (TensorFlow) also in a
    `tf.function` without XLA. Ratios are to BatchNormalization in the same
    mode.
    """
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            rng = np.random.default_rng(0)
            x = ops.convert_to_tensor(
                rng.normal(size=shape).astype("float32"), dtype=dtype
            )
            dy = ops.convert_to_tensor(
                rng.normal(size=shape).astype("float32"), dtype=dtype
            )
            policy = "mixed_" + dtype if dtype != "float32" else "float32"
            steps, info = {}, {}
            for name, make in _implementations(include_group).items():
                layer = make(policy)
                layer.build(shape)
                run, sync, info[("xla", name)] = fwd_bwd_step(layer, x, dy)
                steps[("xla", name)] = (run, sync)
            if torch_reference:
                for name, step in _torch_steps(x, dy).items():
                    steps[("xla", name)] = step
            if graph_mode:
                for name, make in _graph_implementations().items():
                    layer = make(policy)
                    layer.build(shape)
                    run, sync, _ = fwd_bwd_step(
                        layer, x, dy, jit_compile=False
                    )
                    steps[("graph", name)] = (run, sync)
            medians, calls = _time_interleaved(steps, iters, samples)
            for (mode, name), seconds in medians.items():
                details = info.get((mode, name), {})
                rows.append({
                    "kind": "layer",
                    "mode": mode,
                    "shape": list(shape),
                    "dtype": dtype,
                    "impl": name,
                    "ms": seconds * 1e3,
                    "ratio": seconds / medians[(mode, "batch")],
                    "iters": calls,
                    # Kernels of one compiled fwd+bwd call.
                    "kernels": details.get("kernels"),
                    # XLA's scratch memory for fwd+bwd (JAX only): what
                    # the layer keeps beyond its input and output.
                    "temp_bytes": details.get("temp_bytes"),
                    # XLA's estimate of the memory traffic of fwd+bwd, in
                    # passes over a tensor of the input's size (JAX only).
                    "passes": _passes(details, x),
                })
            print(_format_row(shape, dtype, medians), flush=True)
    return rows


def _passes(info, x):
    accessed = (info or {}).get("bytes_accessed")
    if accessed is None:
        return None
    size = int(np.prod(x.shape)) * np.dtype(keras.backend.standardize_dtype(
        x.dtype)).itemsize
    return accessed / size


def _format_row(shape, dtype, medians):
    parts = []
    for mode in ("xla", "graph"):
        if (mode, "batch") not in medians:
            continue
        base = medians[(mode, "batch")]
        ratios = ", ".join(
            f"{name} {t / base:.2f}x"
            for (m, name), t in medians.items()
            if m == mode and name != "batch"
        )
        parts.append(f"{mode}: batch {base * 1e3:.2f} ms; {ratios}")
    return f"{'x'.join(map(str, shape))} {dtype}: " + " | ".join(parts)


def bench_train_step(model_name, batch_size, norms, iters, samples,
                     precision="float32"):
    """Median time of one compiled training step of `model_name` per norm."""
    from keras_seqnorm.models import get_model

    keras.config.set_dtype_policy(precision)
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, size=(batch_size,))
        steps = {}
        for norm in norms:
            model = get_model(
                model_name,
                num_classes=10,
                input_shape=(32, 32, 3),
                norm=norm,
                norm_kwargs=group_kwargs(
                    norm, groups_m=GROUPS_M, groups_c=GROUPS_C
                ),
            )
            model.compile(
                keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True,
            )

            def run(model=model):
                return model.train_on_batch(x, y)

            steps[norm] = (run, lambda result: result)
        medians, calls = _time_interleaved(steps, iters, samples,
                                           minimum=2)
    finally:
        keras.config.set_dtype_policy("float32")
    base = medians[norms[0]]
    print(
        f"{model_name} train step, batch {batch_size}, {precision}: "
        + ", ".join(
            f"{n} {t * 1e3:.1f} ms ({t / base:.3f}x)"
            for n, t in medians.items()
        ),
        flush=True,
    )
    return [
        {
            "kind": "train_step",
            "model": model_name,
            "batch_size": batch_size,
            "dtype": precision,
            "impl": norm,
            "ms": seconds * 1e3,
            "ratio": seconds / base,
            "iters": calls,
        }
        for norm, seconds in medians.items()
    ]


def device_name():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{device.device_kind}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "gpu:" + details.get("device_name", "unknown")
    return f"cpu:{platform.processor() or platform.machine()}"


def _cells(impls, names, key, fmt):
    return " / ".join(
        "-" if impls.get(n, {}).get(key) is None else fmt(impls[n][key])
        for n in names
    )


def markdown_table(rows):
    """The layer rows as one markdown table, the train steps as another.

    Columns: BatchNormalization's median ms and every other layer's ratio
    to it under XLA; kernels of one compiled fwd+bwd call; passes over the
    input and scratch memory (JAX); and, where measured (TensorFlow), graph
    mode without XLA: BatchNormalization's ms and the ratios of the layers'
    compiled call and of their plain ops (`fused=False`).
    """
    fused = ("batch", "ghost", "sequential")
    lines = [
        "| shape | dtype | BatchNorm ms | GhostNorm | SeqNorm | two-stage "
        "SeqNorm | GroupNorm | paper's PyTorch (eager / compiled) "
        "| kernels (BN / Ghost / Seq) "
        "| passes over the input (BN / Ghost / Seq / two-stage) "
        "| scratch MiB (BN / Ghost / Seq / two-stage) "
        "| graph mode: BatchNorm ms | graph: GhostNorm (compiled / plain) "
        "| graph: SeqNorm (compiled / plain) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {}
    for row in rows:
        if row["kind"] == "layer":
            key = ("x".join(map(str, row["shape"])), row["dtype"])
            mode = row.get("mode", "xla")
            keyed.setdefault(key, {}).setdefault(mode, {})[row["impl"]] = row

    def ratio(value):
        return f"{value:.2f}x"

    for (shape, dtype), modes in keyed.items():
        impls, graph = modes.get("xla", {}), modes.get("graph", {})
        cells = [
            _cells(impls, (n,), "ratio", ratio)
            for n in ("ghost", "sequential", "two_stage", "group")
        ]
        cells.append(_cells(
            impls, ("pytorch_paper", "pytorch_paper_compiled"), "ratio", ratio
        ))
        cells.append(_cells(impls, fused, "kernels", str))
        cells.append(_cells(
            impls, fused + ("two_stage",), "passes", lambda p: f"{p:.1f}"
        ))
        cells.append(_cells(
            impls, fused + ("two_stage",), "temp_bytes",
            lambda b: f"{b / 2**20:.1f}",
        ))
        cells.append(_cells(graph, ("batch",), "ms", lambda m: f"{m:.2f}"))
        for name in ("ghost", "sequential"):
            cells.append(_cells(graph, (name, name + "_plain"), "ratio", ratio))
        lines.append(
            f"| {shape} | {dtype} | {impls['batch']['ms']:.2f} | "
            + " | ".join(cells) + " |"
        )
    steps = [r for r in rows if r["kind"] == "train_step"]
    if steps:
        lines += ["", "| train step | norm | ms | ratio |", "|---|---|---|---|"]
        for row in steps:
            lines.append(
                f"| {row['model']} b{row['batch_size']} {row['dtype']} | "
                f"{row['impl']} | {row['ms']:.1f} | {row['ratio']:.3f}x |"
            )
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """What `run` measured.

    Attributes:
        device: The device, e.g. `"cpu:x86_64"` or `"gpu:NVIDIA H100"`.
        backend: The Keras backend.
        versions: Versions of Keras, the backend, keras-seqnorm, Python.
        peak_memory_bytes: Peak device memory where the backend reports it
            (GPU), else `None`.
        groups_c, groups_m: G_C and G_M of the layers timed.
        iters: Calls per timed sample as asked, `None` for enough to last
            `SAMPLE_SECONDS` (each row's `iters` holds the calls made).
        samples: Interleaved samples.
        rows: One dict per measurement: `kind` (`"layer"` or
            `"train_step"`), `impl`, `ms` (median), `ratio` (to
            BatchNormalization), `iters` (calls per sample); layer rows
            also `mode` (`"xla"` or `"graph"`), `shape`, `dtype`,
            `kernels`, `passes`, `temp_bytes`; train-step rows `model`,
            `batch_size`, `dtype`.
    """

    device: str
    backend: str
    versions: dict
    peak_memory_bytes: object
    groups_c: int
    groups_m: int
    iters: object
    samples: int
    rows: list

    def to_dict(self):
        """The result as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    def markdown(self):
        """The result as markdown tables (see `markdown_table` and
        `kernel_table`)."""
        kernels = [r for r in self.rows if r["kind"] == "kernels"]
        timed = [r for r in self.rows if r["kind"] != "kernels"]
        tables = [kernel_table(kernels)] if kernels else []
        if timed or not kernels:
            tables.append(markdown_table(timed))
        return "\n\n".join(tables)

    def save(self, path):
        """Writes the JSON to `path` and the markdown tables beside it
        (`.md` instead of the extension), making `path`'s folder if it
        does not exist."""
        path = _check_out("path", path)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        utils.write_json(path, self.to_dict())
        with open(os.path.splitext(path)[0] + ".md", "w") as f:
            f.write(f"Device: {self.device}, backend {self.backend}, "
                    f"{self.versions}\n\n")
            f.write(self.markdown() + "\n")


def run(shapes=DEFAULT_SHAPES, dtypes=("float32", "bfloat16"), iters=None,
        samples=7, model="wrn16_4", model_batch_size=32,
        model_precision="float32", include_group=True,
        torch_reference=False, graph_mode=None, kernels_only=False,
        out=None):
    """Times the layers against BatchNormalization on this machine.

    Args:
        shapes: Input shapes, channels last. Defaults to `DEFAULT_SHAPES`.
        dtypes: Input dtypes; half precision runs under the matching mixed
            policy. Defaults to `("float32", "bfloat16")`.
        iters: Calls per timed sample. Defaults to `None`: enough for
            the fastest implementation of each shape to take
            `SAMPLE_SECONDS` (20 ms) a sample, at least 5 (2 for the
            train step).
        samples: Interleaved samples; the median is reported. Defaults to
            `7`.
        model: Model for the train-step timing (`""` skips it). Defaults to
            `"wrn16_4"`.
        model_batch_size: Its batch size. Defaults to `32`.
        model_precision: Its dtype policy. Defaults to `"float32"`.
        include_group: Also time `keras.layers.GroupNormalization`.
            Defaults to `True`.
        torch_reference: Also time the paper's PyTorch SeqNorm, eager and
            compiled (needs torch). Defaults to `False`.
        graph_mode: Also time TensorFlow graph mode (no XLA). Defaults to
            `None`: on TensorFlow.
        kernels_only: Time nothing: count the kernels of every layer's
            compiled fwd+bwd, channels last and first, G_M = 8 and 7
            (`kernel_counts`). Defaults to `False`.
        out: Path of a JSON file to write (a `.md` table beside it), or
            `None` to write nothing. Defaults to `None`.

    Returns:
        A `BenchmarkResult`.
    """
    _check_dtypes(dtypes)
    iters = validation.positive_int("iters", iters, allow_none=True)
    samples = validation.positive_int("samples", samples)
    if out:
        _check_out("out", out)
    backend = keras.backend.backend()
    if graph_mode is None:
        graph_mode = backend == "tensorflow"
    if graph_mode and backend != "tensorflow":
        raise ValueError(
            "Argument `graph_mode` needs the tensorflow backend. "
            f"Received: graph_mode={graph_mode} on {backend}"
        )
    if kernels_only:
        rows = kernel_counts(shapes, dtypes)
    else:
        rows = bench_layers(shapes, dtypes, iters, samples,
                            include_group=include_group,
                            torch_reference=torch_reference,
                            graph_mode=graph_mode)
    if model and not kernels_only:
        rows += bench_train_step(
            model,
            model_batch_size,
            ["batch", "ghost", "sequential"],
            iters=None if iters is None else max(1, iters // 2),
            samples=samples,
            precision=model_precision,
        )
    result = BenchmarkResult(
        device=device_name(),
        backend=backend,
        versions=utils.versions(),
        peak_memory_bytes=_peak_memory(),
        groups_c=GROUPS_C,
        groups_m=GROUPS_M,
        iters=iters,
        samples=samples,
        rows=rows,
    )
    if out:
        result.save(out)
    return result


def main(argv=None):
    """`keras-seqnorm bench` (and `python benchmarks/run.py`): runs the
    command line `argv` (default: `sys.argv[1:]`) through the command's
    parser in `keras_seqnorm.cli`; returns the `BenchmarkResult`."""
    from keras_seqnorm import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.run_command(["bench", *argv])


if __name__ == "__main__":
    main()
