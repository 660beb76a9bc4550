"""Training progress of a Screener stage: the log line of each period and ``progress.png``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping

#: nnU-Net logger keys that are not shown in the progress line.
_NOT_IN_LINE = {"iterations", "epoch_start_timestamps", "epoch_end_timestamps", "mean_fg_dice", "ema_fg_dice",
                "dice_per_class_or_region", "val_losses", "lrs"}


def progress_line(logging: Mapping[str, list], iteration: int, num_iterations: int, lr: float) -> str:
    """``iteration i/n | lr ... | loss ... | <key> <last value> ...`` from nnU-Net's local-logger dict."""
    parts = [f"iteration {iteration}/{num_iterations}", f"lr {lr:.3g}"]
    parts += [f"{k.replace('train_losses', 'loss')} {v[-1]:.4g}" for k, v in logging.items()
              if k not in _NOT_IN_LINE and v]
    return " | ".join(parts)


def plot_progress(logging: Mapping[str, list], output_file: Path, title: str = "") -> None:
    """Writes progress.png: one panel per logged key prefix (``loss/``, ``health/``...), the LR and s/iteration.

    Args:
        logging: nnU-Net's local-logger dict (one value per logging period); ``iterations`` gives the x axis.
        output_file: the png path.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    iterations = list(logging.get("iterations", []))
    if not iterations:
        return
    panels: Dict[str, Dict[str, list]] = {"total loss": {"loss": logging.get("train_losses", [])}}
    for key, values in logging.items():
        if "/" in key and values:
            panels.setdefault(key.split("/", 1)[0], {})[key.split("/", 1)[1]] = values
    panels["learning rate"] = {"lr": logging.get("lrs", [])}
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (panel, series) in zip(axes[:, 0], panels.items()):
        for name, values in series.items():
            n = min(len(values), len(iterations))
            if n:
                ax.plot(iterations[:n], values[:n], label=name, marker="." if n < 20 else None)
        ax.set_ylabel(panel)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(output_file)
    plt.close(fig)
