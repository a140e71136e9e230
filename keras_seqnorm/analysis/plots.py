"""Matplotlib figures for the analyses.

Figures are built with `matplotlib.figure.Figure`, not `pyplot`: they are
drawn off-screen by the Agg canvas, touch no global state and need no
display.
"""

from matplotlib.figure import Figure


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
