"""The GPU kernel grid on a machine without a GPU.

`keras-seqnorm bench --kernels-only` counts the kernels of every layer's
compiled fwd+bwd on the machine it runs on. This script counts them as
XLA's GPU compiler builds them for an NVIDIA H200, on a CPU-only machine:
JAX compiles for a described GPU without one (ahead-of-time, "deviceless",
through `jax.experimental.topologies`). Nothing runs, so it times nothing:
kernels (each a launch on the GPU) and XLA's estimate of the bytes moved,
nothing else. It needs JAX's CUDA plugin and libraries, no driver and no
GPU, in an environment of its own (about 3 GB, so neither a dependency of
the package nor part of `make test`)::

    python3.11 -m venv /tmp/gpuvenv
    /tmp/gpuvenv/bin/pip install "jax[cuda13]==$(.venv/bin/python -c \
        'import jax; print(jax.__version__)')" "keras>=3.11"
    PYTHONPATH=$PWD /tmp/gpuvenv/bin/python benchmarks/gpu_kernels.py \
        --out benchmarks/results/kernels-gpu-h200-jax-deviceless.json

The layers pick some programs by the platform they are compiled for:
`benchmark.kernel_counts(sharding=...)` compiles for the described GPU's
devices and has the layers trace their GPU programs
(`keras_seqnorm.ops.compiling_for`).

The grid counted on an H200 itself (`kernels-gpu-h200-jax.md`, JAX 0.11.2,
commit 655625a) is what this reproduces: see docs/performance.md.
"""

import argparse
import os

# No GPU is looked for, and the CUDA plugin skips its checks of the
# driver's libraries (there is no driver).
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from keras_seqnorm import benchmark  # noqa: E402
from keras_seqnorm import cli  # noqa: E402
from keras_seqnorm import utils  # noqa: E402

# XLA's description of the GPU (its `GpuTargetConfig` proto, as text): an
# H200 (GH100, compute capability 9.0, 132 SMs, 4.8 TB/s), CUDA 13 and
# cuDNN 9 as on the machine the device tool lends.
H200 = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 4800000000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 150000000000
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 10
}
runtime_version {
  major: 13
}
device_description_str: "NVIDIA H200"
"""


def _gpu_sharding(target_config):
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=target_config, topology="1x1x1"
    )
    mesh = topologies.make_mesh(topology, (1,), ("device",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", default=None,
        help="comma-separated shapes, channels last, e.g. 64x8x8x32 "
             "(default: the benchmark's)",
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--target-config", default=None,
        help="a file holding XLA's GpuTargetConfig as text (default: an "
             "H200's, written in this script)",
    )
    parser.add_argument("--out", default=None, help="JSON to write")
    args = parser.parse_args(argv)
    config = H200
    if args.target_config:
        with open(args.target_config) as f:
            config = f.read()
    shapes = benchmark.DEFAULT_SHAPES
    if args.shapes:
        shapes = [cli._shape(s) for s in args.shapes.split(",")]
    rows = benchmark.kernel_counts(
        shapes, tuple(args.dtypes.split(",")), sharding=_gpu_sharding(config)
    )
    name = next(
        (line.split('"')[1] for line in config.splitlines()
         if line.strip().startswith("device_description_str")),
        "the GPU of --target-config",
    )
    result = benchmark.BenchmarkResult(
        device=f"gpu:{name} (compiled without one, jax.experimental."
               "topologies)",
        backend="jax", versions=utils.versions(), peak_memory_bytes=None,
        groups_c=benchmark.GROUPS_C, groups_m=benchmark.GROUPS_M,
        iters=None, samples=0, rows=rows,
    )
    print(result.markdown())
    if args.out:
        result.save(args.out)
    return result


if __name__ == "__main__":
    main()
