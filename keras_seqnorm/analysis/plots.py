"""Matplotlib figures for the analyses.

Figures are built with `matplotlib.figure.Figure`, not `pyplot`: they are
drawn off-screen by the Agg canvas, touch no global state and need no
display. Matplotlib is imported when a figure is drawn.
"""


def plot_curves(runs, path, title=None):
    """Validation accuracy per epoch, one line per norm: the mean over its
    seeds, shaded between their minimum and maximum. Writes a PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for index, norm in enumerate(dict.fromkeys(r["norm"] for r in runs)):
        curves = [r["val_accuracy_curve"] for r in runs if r["norm"] == norm]
        length = min(len(curve) for curve in curves)
        values = np.array([curve[:length] for curve in curves])
        epochs = np.arange(1, length + 1)
        color = f"C{index}"
        axis.plot(epochs, values.mean(axis=0), color=color, label=norm)
        axis.fill_between(
            epochs, values.min(axis=0), values.max(axis=0), color=color,
            alpha=0.2,
        )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_landscape(landscape, test_error, path, title=None):
    """The paper's Figures 2/3 and A3: min-max bands and test error.

    Three panels: the loss landscape and the gradient predictiveness, each a
    shaded band between the per-step minimum and maximum for every norm
    (log scale), and the test error of every norm over the epochs.

    Args:
        landscape: `{"norms": {name: {"step", "loss_min", "loss_max",
            "grad_pred_min", "grad_pred_max"}}}`, the `landscape.json`
            schema.
        test_error: `{"norms": {name: {"epoch": [...], "test_error":
            [...]}}}`.
        path: Where to write the PNG.
        title: Optional figure title. Defaults to `None`.

    Returns:
        `path`.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.2))
    axes = figure.subplots(1, 3)
    panels = (
        (axes[0], "loss", "loss landscape (loss at theta - eta g)"),
        (axes[1], "grad_pred", "gradient predictiveness (L2)"),
    )
    colors = {}
    for index, (name, series) in enumerate(landscape["norms"].items()):
        color = colors.setdefault(name, f"C{index}")
        for axis, key, _ in panels:
            axis.fill_between(
                series["step"],
                series[f"{key}_min"],
                series[f"{key}_max"],
                color=color,
                alpha=0.35,
                linewidth=0.5,
                label=name,
            )
    for axis, _, label in panels:
        # Log scale: the bands of the norms differ by orders of magnitude.
        axis.set_yscale("log")
        axis.set_xlabel("training step")
        axis.set_title(label)
        axis.legend()
    axis = axes[2]
    for name, series in test_error["norms"].items():
        axis.plot(
            series["epoch"],
            [100.0 * e for e in series["test_error"]],
            marker="o",
            color=colors.get(name),
            label=name,
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("%")
    axis.set_title("test error")
    axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
