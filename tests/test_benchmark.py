import json
import os
import pathlib
import runpy
import sys

import keras
import numpy as np
import pytest

from keras_seqnorm import benchmark
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import to_numpy


def test_two_stage_reference_equals_the_fused_layer():
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32")
    fused = SequentialNormalization(groups_c=4, groups_m=8)
    reference = benchmark.TwoStageSequentialNormalization(groups_c=4,
                                                          groups_m=8)
    np.testing.assert_allclose(
        to_numpy(fused(x, training=True)),
        to_numpy(reference(x, training=True)),
        atol=1e-4,
    )


XLA_BACKENDS = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="the harness compiles with XLA",
)


@XLA_BACKENDS
def test_harness_writes_ratios_to_batch_normalization(tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark.main([
        "--shapes", "16x4x4x16", "--dtypes", "float32", "--iters", "1",
        "--samples", "1", "--model", "", "--out", str(out),
    ])
    assert isinstance(result, benchmark.BenchmarkResult)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result.to_dict()))
    assert saved["backend"] == keras.backend.backend()
    rows = {(row["mode"], row["impl"]): row for row in saved["rows"]}
    xla = {impl for mode, impl in rows if mode == "xla"}
    assert xla == {"batch", "ghost", "sequential", "two_stage", "group"}
    assert rows[("xla", "batch")]["ratio"] == 1.0
    assert all(row["ms"] > 0 for row in saved["rows"])
    assert all(
        isinstance(rows[("xla", name)]["kernels"], int)
        for name in ("batch", "ghost", "sequential")
    )
    graph = {impl for mode, impl in rows if mode == "graph"}
    if keras.backend.backend() == "tensorflow":
        # Graph mode without XLA: the layers' compiled call and plain ops.
        assert graph == {"batch", "ghost", "sequential", "ghost_plain",
                         "sequential_plain"}
        assert rows[("graph", "batch")]["ratio"] == 1.0
    else:
        assert graph == set()
    table = (tmp_path / "bench.md").read_text()
    assert "| 16x4x4x16 | float32 |" in table
    assert table.strip().endswith(result.markdown().strip())


def _result(rows=()):
    return benchmark.BenchmarkResult(
        device="cpu:test", backend=keras.backend.backend(), versions={},
        peak_memory_bytes=None, groups_c=4, groups_m=8, iters=1, samples=1,
        rows=list(rows),
    )


def test_save_makes_the_folder_and_writes_the_table_beside(tmp_path,
                                                           monkeypatch):
    result = _result()
    result.save(str(tmp_path / "new" / "deeper" / "gpu.json"))
    assert sorted(os.listdir(tmp_path / "new" / "deeper")) == [
        "gpu.json", "gpu.md"
    ]
    saved = json.loads((tmp_path / "new" / "deeper" / "gpu.json").read_text())
    assert saved == result.to_dict()
    # A dot in the folder, none in the name: the table is `name.md` beside
    # it, not a file named after the folder.
    monkeypatch.chdir(tmp_path)
    result.save(os.path.join(".", "results"))
    assert {"results", "results.md"} <= set(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=r"path=.*table\.md"):
        result.save(str(tmp_path / "table.md"))
    assert not (tmp_path / "table.md").exists()
    # The command refuses it before it times anything.
    with pytest.raises(ValueError, match=r"`out`.*out=.*table\.md"):
        benchmark.run(shapes=[(8, 2, 2, 8)], out=str(tmp_path / "table.md"),
                      model="", iters=1, samples=1)


@XLA_BACKENDS
def test_both_entry_points_write_nothing_without_out(tmp_path, monkeypatch,
                                                     capsys):
    # Issue 16: `keras-seqnorm bench`, `make bench` and
    # `python benchmarks/run.py` print the tables and never overwrite the
    # committed results unless given --out.
    results = pathlib.Path(__file__).parents[1] / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    monkeypatch.chdir(tmp_path)
    flags = ["--shapes", "8x2x2x8", "--dtypes", "float32", "--iters", "1",
             "--samples", "1", "--model", "", "--no-group",
             "--no-graph-mode"]
    benchmark.main(flags)
    monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", *flags])
    runpy.run_path(
        str(results.parent / "run.py"), run_name="__main__"
    )
    out = capsys.readouterr().out
    assert out.count("| 8x2x2x8 | float32 |") == 2
    assert list(tmp_path.iterdir()) == []
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before


def test_calls_per_sample_last_the_target():
    # 0.3 ms calls: 67 make 20 ms; slow calls keep the minimum; instant
    # ones stop at 10000.
    assert benchmark.calls_per_sample(0.0003) == 67
    assert 67 * 0.0003 >= benchmark.SAMPLE_SECONDS > 66 * 0.0003
    assert benchmark.calls_per_sample(0.001) == 20
    assert benchmark.calls_per_sample(0.1) == 5
    assert benchmark.calls_per_sample(0.1, minimum=2) == 2
    assert benchmark.calls_per_sample(1e-7) == 10000
    assert benchmark.calls_per_sample(0.0) == 10000
    assert benchmark.calls_per_sample(0.01, target=0.5) == 50


def test_interleaved_samples_rotate_the_order(monkeypatch):
    # Fake steps on a fake clock: step `a` costs 1 s a call, `b` 2 s, `c`
    # 3 s. Each sample starts one step later than the one before, and
    # each step's median is its own cost whatever its place.
    now = [0.0]
    calls = []
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: now[0])

    def step(name, cost):
        def run():
            calls.append(name)
            now[0] += cost
            return name

        return run, lambda result: None

    steps = {name: step(name, cost)
             for name, cost in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    medians, iters = benchmark._time_interleaved(steps, iters=2, samples=4)
    assert iters == 2
    assert medians == {"a": 1.0, "b": 2.0, "c": 3.0}
    warm_up, timed = calls[:6], calls[6:]
    assert warm_up == ["a", "a", "b", "b", "c", "c"]
    orders = [timed[i:i + 6:2] for i in range(0, len(timed), 6)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                      ["a", "b", "c"]]


@XLA_BACKENDS
def test_default_iters_are_chosen_per_shape_and_recorded():
    result = benchmark.run(shapes=[(8, 2, 2, 8)], dtypes=["float32"],
                           samples=1, model="", include_group=False,
                           graph_mode=False)
    assert result.iters is None
    calls = {row["iters"] for row in result.rows}
    # One count for the whole interleaved loop of a shape, at least 5.
    assert len(calls) == 1
    (calls,) = calls
    assert isinstance(calls, int) and 5 <= calls <= 10000
    fixed = benchmark.run(shapes=[(8, 2, 2, 8)], dtypes=["float32"],
                          iters=3, samples=1, model="", include_group=False,
                          graph_mode=False)
    assert fixed.iters == 3
    assert {row["iters"] for row in fixed.rows} == {3}
    for name, value in (("iters", 0), ("samples", 0), ("iters", 2.5)):
        with pytest.raises(ValueError, match=f"Received: {name}={value}"):
            benchmark.run(shapes=[(8, 2, 2, 8)], model="", **{name: value})


@pytest.mark.parametrize("flags, expected", [
    (["--shapes", "16x4xa"], "Received: shapes='16x4xa'"),
    (["--shapes", "16x0x4x4"], "Received: shapes='16x0x4x4'"),
    (["--dtypes", "float64"], "Received: dtypes='float64'"),
    (["--iters", "0"], "Received: iters=0"),
])
def test_bad_flags_are_one_line_errors(flags, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main([*flags, "--model", ""])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert expected in error and "see keras-seqnorm bench --help" in error


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="XLA memory analysis is read through JAX")
def test_fused_layers_keep_only_batch_by_channel_scratch():
    # Issue 6: activation memory no more than BatchNorm's plus
    # O(batch x channels); the two-stage formulation keeps whole copies.
    shape = (32, 16, 16, 64)
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    temp = {}
    for name, make in benchmark._implementations().items():
        layer = make("float32")
        layer.build(shape)
        temp[name] = benchmark.fwd_bwd_step(layer, x, dy)[2]["temp_bytes"]
    batch_by_channel = shape[0] * shape[-1] * 4
    for name in ("ghost", "sequential"):
        assert temp[name] <= temp["batch"] + 64 * batch_by_channel, temp
    assert temp["two_stage"] >= x.nbytes, temp


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="XLA cost analysis is read through JAX")
def test_fused_layers_move_no_more_memory_than_batch_normalization():
    # Issue 6: XLA's own estimate of the bytes read and written by fwd+bwd,
    # float32. Were the (sample, channel) statistics fused into the loops
    # over the input, or a reduction duplicated into its consumers, it would
    # exceed BatchNormalization's (17.1 and 17.3 passes against 15.0 before
    # the custom gradients); the two-stage formulation makes about 42.
    shape = (32, 16, 16, 64)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    passes = {}
    for name, make in benchmark._implementations().items():
        layer = make("float32")
        layer.build(shape)
        info = benchmark.fwd_bwd_step(layer, x, x)[2]
        passes[name] = benchmark._passes(info, x)
    for name in ("ghost", "sequential"):
        assert passes[name] <= passes["batch"], passes
    assert passes["two_stage"] > 2 * passes["batch"], passes


def test_paper_pytorch_reference_equals_the_fused_layer():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(16, 4, 4, 8)).astype("float32")
    fused = SequentialNormalization(groups_c=4, groups_m=8, epsilon=1e-5)
    expected = to_numpy(fused(x, training=True))
    paper = benchmark.paper_pytorch_seqnorm(
        torch.tensor(np.moveaxis(x, -1, 1).reshape(16, 8, -1)),
        torch.ones(8),
        torch.zeros(8),
        groups_c=4,
        groups_m=8,
    ).numpy()
    paper = np.moveaxis(paper.reshape(16, 8, 4, 4), 1, -1)
    np.testing.assert_allclose(paper, expected, atol=1e-4)


def test_kernel_count_reads_the_entry_computation():
    text = "\n".join([
        "HloModule m",
        "%fused (p: f32[4]) -> f32[4] {",
        "  %p = f32[4]{0} parameter(0)",
        "  ROOT %e = f32[4]{0} exponential(%p)",
        "}",
        "ENTRY %main (x: f32[4]) -> (f32[4], f32[]) {",
        "  %x = f32[4]{0} parameter(0)",
        "  %c = f32[] constant(0)",
        "  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused",
        "  %b = f32[2,2]{1,0} bitcast(%f)",
        "  %r = (f32[4]{0}, f32[]) fusion(%b, %c), kind=kLoop, calls=%g",
        "  %t = f32[] get-tuple-element(%r), index=1",
        "  %y = f32[4]{0} copy(%f)",
        "  ROOT %out = (f32[4]{0}, f32[]) tuple(%y, %t)",
        "}",
    ])
    assert benchmark.kernel_count(text) == 3  # two fusions and a copy


# Issue 14: GhostNorm and SeqNorm fwd+bwd (with the moving-statistics
# update) compile to at most 1.5x BatchNormalization's kernels, even and
# uneven ghost batches (G_M = 8 and 7 of 64 samples), channels last and
# first, float32 and bfloat16; XLA's estimate of the bytes moved stays at
# most BatchNormalization's (JAX). Before: 49-86 kernels against 14.
@XLA_BACKENDS
@pytest.mark.parametrize(
    "shape, axis, dtype",
    [
        ((64, 8, 8, 32), -1, "float32"),
        ((64, 16, 16, 16), -1, "float32"),
        ((64, 16, 16, 16), 1, "bfloat16"),
    ],
)
def test_as_few_kernels_as_batch_normalization(shape, axis, dtype):
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.normal(size=shape).astype("float32"), dtype=dtype
    )
    policy = "float32" if dtype == "float32" else "mixed_" + dtype
    layers = {
        "batch": keras.layers.BatchNormalization(axis=axis, dtype=policy),
        "ghost": GhostNormalization(groups_m=8, axis=axis, dtype=policy),
        "ghost_uneven": GhostNormalization(
            groups_m=7, axis=axis, dtype=policy
        ),
        "sequential": SequentialNormalization(
            groups_c=4, groups_m=8, axis=axis, dtype=policy
        ),
        "sequential_uneven": SequentialNormalization(
            groups_c=4, groups_m=7, axis=axis, dtype=policy
        ),
    }
    kernels, passes = {}, {}
    for name, layer in layers.items():
        layer.build(shape)
        info = benchmark.fwd_bwd_step(layer, x, x)[2]
        kernels[name] = info["kernels"]
        passes[name] = benchmark._passes(info, x)
    for name in layers:
        assert kernels[name] <= 1.5 * kernels["batch"], kernels
    if keras.backend.backend() == "jax":
        for name in layers:
            assert passes[name] <= passes["batch"] + 1e-9, passes


# TensorFlow's XLA splits a reduction over an axis longer than 32 into a
# reduce-window and a reduce, with the stacked operands materialized
# first; the layers sum long channel groups and ghost batches over several
# axes of at most 32 instead. Before, at these shapes: SeqNorm with groups
# of 40 channels 24 kernels and GhostNorm with ghost batches of 64 samples
# 21, against BatchNormalization's 14 (the bound is 21). (On JAX these
# sums compile alike either way.)
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA"
)
@pytest.mark.parametrize(
    "shape, groups_c", [((64, 2, 2, 160), 4), ((512, 2, 2, 16), None)]
)
def test_long_groups_within_the_kernel_bound(shape, groups_c):
    rows = benchmark.kernel_counts(shapes=[shape], dtypes=("float32",))
    impl = "ghost" if groups_c is None else "sequential"
    for layout in ("channels_last", "channels_first"):
        batch = [r for r in rows if r["layout"] == layout][0]
        assert batch["impl"] == "batch"
        found = [
            r["kernels"] for r in rows
            if r["layout"] == layout and r["impl"] == impl
        ]
        assert len(found) == 2  # G_M = 8 and 7
        assert max(found) <= 1.5 * batch["kernels"], (layout, rows)


def _assert_within_the_kernel_bound(shape, impls=("ghost", "sequential")):
    # `impls` with G_M = 8 and 7, channels last and first, float32: at
    # most 1.5x BatchNormalization's kernels in the same layout.
    rows = benchmark.kernel_counts(shapes=[shape], dtypes=("float32",))
    layouts = {r["layout"] for r in rows}
    assert layouts == {"channels_last", "channels_first"}, rows
    for layout in layouts:
        found = {
            (r["impl"], r.get("groups_m")): r["kernels"]
            for r in rows if r["layout"] == layout
        }
        batch = found[("batch", None)]
        layers = [found[(impl, g)] for impl in impls for g in (8, 7)]
        assert max(layers) <= 1.5 * batch, (layout, found)


# TensorFlow's XLA also split the per-(sample, channel) sums over a spatial
# axis longer than 32 (ResNet-50's 56x56), and materialized x - s,
# (x - s)^2 and dy * (x - s) for them; each pass's two sums are now one
# variadic reduction, which it does not split. Before, at this shape:
# GhostNorm 21 / 24 and SeqNorm 24 / 25 kernels (G_M = 8 / 7) against
# BatchNormalization's 14 (64x56x56x256: 23-26 against 14).
@XLA_BACKENDS
def test_long_slices_within_the_kernel_bound():
    _assert_within_the_kernel_bound((16, 40, 40, 16))


# Batch 32, 512 channels. TensorFlow: BatchNormalization's per-channel
# sums over 512 values go to YNNPACK whole, 10 kernels, a bound of 15;
# GhostNorm meets it with the variadic sums, and uneven ghost batches
# summed around their means without spreading them
# (`_GhostBatches.sum_around`); SeqNorm with its GroupNorm stage in the
# `(M, G, W)` layout (`_ChannelGroups.split`), and no backward fusion
# barrier for uneven ghost batches. Before: GhostNorm 17 / 20 (G_M = 8 /
# 7), SeqNorm 16 / 18. JAX on CPUs: YNNPACK takes the `(M, C)` arithmetic
# after a sum of (x - s)^2, and the backward's ghost-batch terms were
# recomputed inside the kernels that read them; SeqNorm now keeps sums of
# squares and the ghost terms pass a fusion barrier there. Before: SeqNorm
# with G_M = 7 compiled to 22 kernels against BatchNormalization's 14 (the
# bound is 21).
@XLA_BACKENDS
def test_wide_layers_within_the_kernel_bound():
    _assert_within_the_kernel_bound((32, 4, 4, 512))


# GhostNorm with G_M dividing M on JAX CPUs sums each ghost batch at once
# (`ops._WholeGhostBatches`): fewer kernels than BatchNormalization's, where
# the per-(sample, channel) sums pooled over ghost batches took 13-18
# against 14 (G_M = 8, float32, 64x16x16x16 to 32x4x4x512).
@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's CPU compiler"
)
@pytest.mark.parametrize("shape", [(64, 16, 16, 16), (32, 4, 4, 512)])
def test_whole_ghost_batches_take_fewer_kernels_than_batch_norm(shape):
    rows = benchmark.kernel_counts(shapes=[shape], dtypes=("float32",))
    for layout in ("channels_last", "channels_first"):
        found = {
            (r["impl"], r.get("groups_m")): r["kernels"]
            for r in rows if r["layout"] == layout
        }
        assert found[("ghost", 8)] < found[("batch", None)], found


@XLA_BACKENDS
def test_kernels_only_counts_every_layout_and_ghost_split(capsys):
    # `bench --kernels-only`: BatchNorm, and GhostNorm and SeqNorm with
    # G_M = 8 and 7, channels last and first, each counted from its own
    # compiled fwd+bwd; nothing timed.
    result = benchmark.main([
        "--shapes", "16x2x2x8", "--dtypes", "float32", "--kernels-only",
    ])
    rows = result.rows
    assert {row["kind"] for row in rows} == {"kernels"}
    assert {(r["layout"], r["impl"], r["groups_m"]) for r in rows} == {
        (layout, impl, g)
        for layout in ("channels_last", "channels_first")
        for impl, g in (("batch", None), ("ghost", 8), ("ghost", 7),
                        ("sequential", 8), ("sequential", 7))
    }
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(size=(16, 8, 2, 2)), "float32"
    )
    layer = GhostNormalization(groups_m=7, axis=1)
    layer.build(x.shape)
    expected = benchmark.fwd_bwd_step(layer, x, x)[2]["kernels"]
    (row,) = [r for r in rows if r["layout"] == "channels_first"
              and r["impl"] == "ghost" and r["groups_m"] == 7]
    assert row["kernels"] == expected
    assert row["shape"] == [16, 2, 2, 8]
    batch = [r for r in rows if r["layout"] == "channels_first"
             and r["impl"] == "batch"][0]["kernels"]
    assert row["ratio"] == pytest.approx(expected / batch)
    out = capsys.readouterr().out
    assert "| 16x2x2x8 | float32 | channels_first |" in out
    assert "G_M=8 / G_M=7" in out and "BatchNorm ms" not in out


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's shardings"
)
def test_kernel_counts_compile_for_the_devices_of_a_sharding():
    # Compiled from abstract arguments placed by `sharding`, for its
    # devices' platform (here this machine's CPU, inside a context that
    # names another): the same programs and kernels as compiled for the
    # default device.
    import jax

    from keras_seqnorm import ops as norm_ops

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    kwargs = {"shapes": [(16, 2, 2, 8)], "dtypes": ("float32",)}
    expected = benchmark.kernel_counts(**kwargs)
    with norm_ops.compiling_for("gpu"):
        found = benchmark.kernel_counts(sharding=cpu, **kwargs)
        gpu_programs = benchmark.kernel_counts(**kwargs)
    assert found == expected
    # The GPUs' programs compiled for the CPU differ (whole ghost batches
    # are summed on JAX CPUs only), so the sharding's platform was used.
    assert gpu_programs != expected
    with pytest.raises(ValueError, match="Received: sharding='cpu'"):
        benchmark.kernel_counts(sharding="cpu", **kwargs)


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="the other backends"
)
def test_kernel_counts_take_a_sharding_on_jax_only():
    with pytest.raises(ValueError, match="needs the jax backend"):
        benchmark.kernel_counts(shapes=[(8, 2, 2, 8)], sharding=object())


def test_run_and_kernel_counts_name_a_dtype_they_do_not_take():
    with pytest.raises(ValueError, match="Received: dtypes='float64'"):
        benchmark.run(shapes=[(8, 2, 2, 8)], dtypes=["float32", "float64"],
                      model="")
    with pytest.raises(ValueError, match="Received: dtypes='int8'"):
        benchmark.kernel_counts(shapes=[(8, 2, 2, 8)], dtypes=["int8"])
