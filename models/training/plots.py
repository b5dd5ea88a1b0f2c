"""``curves.png`` of a run: training loss and active-triplet share per step, validation
accuracy and TAR per epoch. Drawn from the CSV logs, so it can be redrawn for any run dir."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["plot_run"]


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _floats(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def plot_run(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps = _read(run_dir / "steps.csv")
    epochs = _read(run_dir / "epochs.csv")
    fig, (ax_loss, ax_val) = plt.subplots(2, 1, figsize=(9, 7), constrained_layout=True)

    if steps:
        x = _floats(steps, "step")
        loss = _floats(steps, "loss")
        ax_loss.plot(x, loss, color="tab:blue", alpha=0.3, lw=0.8, label="loss (step)")
        window = max(1, min(50, len(loss) // 10))
        if window > 1:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax_loss.plot(x[window - 1 :], smooth, color="tab:blue", lw=1.8,
                         label=f"loss ({window}-step mean)")  # fmt: skip
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss")
        ax_act = ax_loss.twinx()
        ax_act.plot(x, _floats(steps, "active_fraction"), color="tab:orange", alpha=0.5, lw=0.8,
                    label="active (mined)")  # fmt: skip
        batch_active = _floats(steps, "batch_active_fraction")
        if not np.isnan(batch_active).all():
            ax_act.plot(x, batch_active, color="tab:red", alpha=0.5, lw=0.8,
                        label="active (all triplets)")  # fmt: skip
        ax_act.legend(loc="center right")
        ax_act.set_ylabel("active fraction", color="tab:orange")
        ax_act.set_ylim(0, 1.05)
        ax_loss.legend(loc="upper right")
    ax_loss.set_title(f"training: {run_dir.name}")

    if epochs:
        x = _floats(epochs, "step")
        ax_val.plot(x, _floats(epochs, "val_accuracy"), "o-", label="pair accuracy (best thr.)")
        far = epochs[0].get("val_far", "")
        ax_val.plot(x, _floats(epochs, "val_tar"), "s-", label=f"TAR @ FAR={far}")
        ax_val.set_ylim(0, 1.02)
        ax_val.set_xlabel("step")
        ax_val.set_ylabel("held-out identities")
        ax_val.legend(loc="lower right")
        ax_val.grid(alpha=0.3)
    ax_val.set_title("validation (identities never trained on)")

    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
