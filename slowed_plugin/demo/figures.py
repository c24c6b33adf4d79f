"""The demo's figures: safety and reasoning per epoch, and the safety-versus-reasoning frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_write

FIGURE = "slowed-demo.png"
FRONTIER = "frontier.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: dict[str, Any], path: str | Path, title: str) -> None:
    """Safety ratio and reasoning accuracy per epoch per method (mean line, min-max band over seeds)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    # Methods often coincide (a mechanism with no effect): distinct dashes, markers and widths keep
    # every line visible on top of the others.
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for i, entry in enumerate(summary.values()):
        color = cmap(i % 10)
        for ax, metric in zip(axes, ("safety_ratio", "reasoning_accuracy"), strict=True):
            curve = entry["curves"][metric]
            mean = [c["mean"] for c in curve]
            ax.plot(
                entry["epochs"],
                mean,
                styles[i % len(styles)],
                marker=markers[i % len(markers)],
                ms=5 - 0.4 * (i % 5),
                lw=2.6 - 0.35 * (i % 5),
                color=color,
                label=entry["label"],
            )
            if len(entry["seeds"]) > 1:
                ax.fill_between(
                    entry["epochs"], [c["min"] for c in curve], [c["max"] for c in curve], color=color, alpha=0.15
                )
    axes[0].set_title("Safety ratio on held-out harmful prompts")
    axes[1].set_title("Reasoning accuracy on held-out CoT prompts")
    for ax in axes:
        ax.set_xlabel("epoch (0 = aligned base model)")
        ax.set_ylim(-0.03, 1.03)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share")
    axes[1].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)


def plot_frontier(summary: dict[str, Any], path: str | Path, title: str) -> None:
    """Last-epoch safety against reasoning accuracy, one point per tau (plain LoRA is tau = infinity)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.6, 4.8), constrained_layout=True)
    points = []
    off_curve = ("*", "D", "P", "X", "v")
    n_off = 0
    for entry in summary.values():
        s, r = entry["final"]["safety_ratio"], entry["final"]["reasoning_accuracy"]
        # (clamped: the mean of equal values can round a hair outside them)
        xerr = [[max(0.0, r["mean"] - r["min"])], [max(0.0, r["max"] - r["mean"])]]
        yerr = [[max(0.0, s["mean"] - s["min"])], [max(0.0, s["max"] - s["mean"])]]
        if entry.get("anchor_mode") is not None:
            # The anchor methods (and the placebo) are points against the tau curve, not on it.
            name = f"{entry['label']} ({entry['anchor_text']})"
            if entry["tau"] is not None:
                name += f", tau={entry['tau']:g}"
            marker = off_curve[n_off % len(off_curve)]
            n_off += 1
            ax.errorbar(r["mean"], s["mean"], xerr=xerr, yerr=yerr, fmt=marker, ms=9, capsize=3, label=name)
            continue
        name = "plain LoRA (tau = inf)" if entry["tau"] is None else f"tau={entry['tau']:g}"
        ax.errorbar(r["mean"], s["mean"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=name)
        points.append((float("inf") if entry["tau"] is None else entry["tau"], r["mean"], s["mean"]))
    points.sort()
    ax.plot([p[1] for p in points], [p[2] for p in points], color="grey", alpha=0.5, zorder=0)
    ax.set_xlabel("reasoning accuracy, last epoch")
    ax.set_ylabel("safety ratio, last epoch")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    # Beside the axes: the points near safety 1 and reasoning .5 (the anchor's) are where a legend would go.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title(title, fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
