"""Speed of the layers against `keras.layers.BatchNormalization`.

`keras-seqnorm bench` (or `make bench`, or `python benchmarks/run.py`) times
fwd+bwd through each normalization, compiled with XLA on the active backend
(TensorFlow or JAX), with samples interleaved across the implementations in
one process, and reports medians and ratios to BatchNormalization on the same
shape and dtype. It also times a whole training step of a model with each
norm. Results go to a JSON file (with device, backend and versions) and a
markdown table.
"""

import argparse
import inspect
import json
import platform
import statistics
import time

import keras
import numpy as np
from keras import ops

from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from keras_seqnorm.version import __version__

# NHWC activations of WRN-28-10 (first three) and ResNet-50 (last).
DEFAULT_SHAPES = (
    (128, 32, 32, 160),
    (128, 16, 16, 320),
    (128, 8, 8, 640),
    (64, 56, 56, 256),
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


def _implementations(include_group=True):
    impls = {
        "batch": lambda dtype: keras.layers.BatchNormalization(dtype=dtype),
        "ghost": lambda dtype: GhostNormalization(
            groups_m=GROUPS_M, dtype=dtype
        ),
        "sequential": lambda dtype: SequentialNormalization(
            groups_c=GROUPS_C, groups_m=GROUPS_M, dtype=dtype
        ),
        "two_stage": lambda dtype: TwoStageSequentialNormalization(
            dtype=dtype
        ),
    }
    if include_group:
        impls["group"] = lambda dtype: keras.layers.GroupNormalization(
            groups=GROUPS_C, dtype=dtype
        )
    return impls


def _fwd_bwd_tensorflow(layer, x, dy):
    import tensorflow as tf

    variables = layer.trainable_variables

    @tf.function(jit_compile=True)
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

    return run, sync, {}


def _fwd_bwd_jax(layer, x, dy):
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    takes_training = "training" in inspect.signature(layer.call).parameters
    kwargs = {"training": True} if takes_training else {}

    @jax.jit
    def step(trainable, non_trainable, x, dy):
        def forward(trainable, x):
            out, _ = layer.stateless_call(
                trainable, non_trainable, x, **kwargs
            )
            return out

        out, vjp = jax.vjp(forward, trainable, x)
        # The output is returned too, so XLA cannot drop the forward pass.
        return out, vjp(dy)

    def run():
        return step(trainable, non_trainable, x, dy)

    def sync(result):
        return jax.block_until_ready(result)

    compiled = step.lower(trainable, non_trainable, x, dy).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
        cost = cost[0] if cost else {}
    info = {
        "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "bytes_accessed": cost.get("bytes accessed"),
    }
    return run, sync, info


def fwd_bwd_step(layer, x, dy):
    """A compiled fwd+bwd call of `layer` at `x` with output cotangent `dy`.

    Returns `(run, sync, info)`: `run()` makes one call, `sync(result)`
    waits for it, and where the backend reports them (JAX) `info` holds
    XLA's scratch memory for the call (`temp_bytes`) and XLA's estimate of
    the bytes it reads and writes (`bytes_accessed`); else it is empty.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _fwd_bwd_tensorflow(layer, x, dy)
    if backend == "jax":
        return _fwd_bwd_jax(layer, x, dy)
    raise ValueError(
        "The benchmark supports the tensorflow and jax backends. "
        f"Received: KERAS_BACKEND={backend}"
    )


def _time_interleaved(steps, iters, samples):
    """Median seconds per call of each `(run, sync)`; samples interleaved."""
    for run, sync in steps.values():  # compile and warm up
        sync(run())
        sync(run())
    times = {name: [] for name in steps}
    for _ in range(samples):
        for name, (run, sync) in steps.items():
            start = time.perf_counter()
            for _ in range(iters):
                result = run()
            sync(result)
            times[name].append((time.perf_counter() - start) / iters)
    return {name: statistics.median(t) for name, t in times.items()}


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
                 torch_reference=False):
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
                run, sync, info[name] = fwd_bwd_step(layer, x, dy)
                steps[name] = (run, sync)
            if torch_reference:
                steps.update(_torch_steps(x, dy))
            medians = _time_interleaved(steps, iters, samples)
            base = medians["batch"]
            for name, seconds in medians.items():
                rows.append({
                    "kind": "layer",
                    "shape": list(shape),
                    "dtype": dtype,
                    "impl": name,
                    "ms": seconds * 1e3,
                    "ratio": seconds / base,
                    # XLA's scratch memory for fwd+bwd (JAX only): what
                    # the layer keeps beyond its input and output.
                    "temp_bytes": info.get(name, {}).get("temp_bytes"),
                    # XLA's estimate of the memory traffic of fwd+bwd, in
                    # passes over a tensor of the input's size (JAX only).
                    "passes": _passes(info.get(name), x),
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
    base = medians["batch"]
    parts = [f"{name} {t / base:.2f}x" for name, t in medians.items()]
    return (
        f"{'x'.join(map(str, shape))} {dtype}: batch {base * 1e3:.2f} ms; "
        + ", ".join(parts)
    )


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
            kwargs = {}
            if norm == "ghost":
                kwargs = {"groups_m": GROUPS_M}
            elif norm == "sequential":
                kwargs = {"groups_m": GROUPS_M, "groups_c": GROUPS_C}
            model = get_model(
                model_name,
                num_classes=10,
                input_shape=(32, 32, 3),
                norm=norm,
                norm_kwargs=kwargs,
            )
            model.compile(
                keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True,
            )

            def run(model=model):
                return model.train_on_batch(x, y)

            steps[norm] = (run, lambda result: result)
        medians = _time_interleaved(steps, iters, samples)
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


def _versions():
    versions = {"keras": keras.__version__, "keras_seqnorm": __version__,
                "python": platform.python_version()}
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    else:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


def markdown_table(rows):
    lines = [
        "| shape | dtype | BatchNorm ms | GhostNorm | SeqNorm | two-stage "
        "SeqNorm | GroupNorm | paper's PyTorch (eager / compiled) "
        "| scratch MiB (BN / Ghost / Seq / two-stage) "
        "| passes over the input (BN / Ghost / Seq / two-stage) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {}
    for row in rows:
        if row["kind"] == "layer":
            key = ("x".join(map(str, row["shape"])), row["dtype"])
            keyed.setdefault(key, {})[row["impl"]] = row
    for (shape, dtype), impls in keyed.items():
        cells = [
            f"{impls[n]['ratio']:.2f}x" if n in impls else "-"
            for n in ("ghost", "sequential", "two_stage", "group")
        ]
        cells.append(" / ".join(
            f"{impls[n]['ratio']:.2f}x" if n in impls else "-"
            for n in ("pytorch_paper", "pytorch_paper_compiled")
        ))
        memory = [
            impls[n].get("temp_bytes") if n in impls else None
            for n in ("batch", "ghost", "sequential", "two_stage")
        ]
        memory = " / ".join(
            "-" if m is None else f"{m / 2**20:.1f}" for m in memory
        )
        passes = " / ".join(
            "-" if impls.get(n, {}).get("passes") is None
            else f"{impls[n]['passes']:.1f}"
            for n in ("batch", "ghost", "sequential", "two_stage")
        )
        lines.append(
            f"| {shape} | {dtype} | {impls['batch']['ms']:.2f} | "
            + " | ".join(cells) + f" | {memory} | {passes} |"
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


def _parse_shapes(text):
    try:
        return [
            tuple(int(d) for d in item.split("x"))
            for item in text.split(",")
        ]
    except ValueError:
        raise ValueError(
            "Argument `--shapes` must be comma-separated NxHxWxC shapes, "
            f"e.g. 128x32x32x160. Received: --shapes={text}"
        ) from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-seqnorm bench",
        description="Time GhostNorm and SeqNorm against BatchNormalization.",
    )
    parser.add_argument(
        "--shapes",
        default=",".join("x".join(map(str, s)) for s in DEFAULT_SHAPES),
        help="comma-separated NxHxWxC activation shapes",
    )
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="comma-separated input dtypes (half precision runs under the "
        "matching mixed policy)",
    )
    parser.add_argument("--iters", type=int, default=5,
                        help="calls per timed sample")
    parser.add_argument("--samples", type=int, default=7,
                        help="interleaved samples; the median is reported")
    parser.add_argument("--model", default="wrn16_4",
                        help="model for the train-step timing ('' skips it); "
                        "use wrn28_10 with batch 128 on a GPU")
    parser.add_argument("--model-batch-size", type=int, default=32)
    parser.add_argument("--model-precision", default="float32")
    parser.add_argument("--no-group", action="store_true",
                        help="skip keras.layers.GroupNormalization")
    parser.add_argument("--torch-reference", action="store_true",
                        help="also time the paper's PyTorch SeqNorm "
                        "(F.group_norm, then Figure A1), eager and under "
                        "torch.compile, in the same interleaved loop "
                        "(needs torch)")
    parser.add_argument("--out", default=None,
                        help="JSON output path (a .md table is written "
                        "beside it)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    shapes = _parse_shapes(args.shapes)
    dtypes = [d for d in args.dtypes.split(",") if d]
    for dtype in dtypes:
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(
                "Argument `--dtypes` takes float32, float16 and bfloat16. "
                f"Received: --dtypes={args.dtypes}"
            )
    rows = bench_layers(shapes, dtypes, args.iters, args.samples,
                        include_group=not args.no_group,
                        torch_reference=args.torch_reference)
    if args.model:
        rows += bench_train_step(
            args.model,
            args.model_batch_size,
            ["batch", "ghost", "sequential"],
            iters=max(1, args.iters // 2),
            samples=args.samples,
            precision=args.model_precision,
        )
    result = {
        "device": device_name(),
        "backend": keras.backend.backend(),
        "versions": _versions(),
        "peak_memory_bytes": _peak_memory(),
        "groups_c": GROUPS_C,
        "groups_m": GROUPS_M,
        "iters": args.iters,
        "samples": args.samples,
        "rows": rows,
    }
    table = markdown_table(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        with open(args.out.rsplit(".", 1)[0] + ".md", "w") as f:
            f.write(f"Device: {result['device']}, backend "
                    f"{result['backend']}, {result['versions']}\n\n")
            f.write(table + "\n")
    return result


if __name__ == "__main__":
    main()
