"""The per-epoch grid of validation samples with their predicted and true labels
(`train_wrapper.args.log_samples: N`): samples/val_epoch_NNN.png in the experiment folder and the
image `val/samples` in tb/. Lightning-free: train.py and the base wrapper both call it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch


def label_of(pred: torch.Tensor) -> list[str]:
    """What to print for each prediction: the class (argmax) of scores, else the value."""
    if pred.dim() == 2 and pred.shape[1] > 1:
        return [str(int(i)) for i in pred.argmax(1)]
    return [f'{float(v):.3g}' for v in pred.reshape(len(pred), -1)[:, 0]]


def prediction_figure(images: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> Any:
    """A matplotlib figure: each image titled 'predicted / true', green when they agree."""
    import matplotlib  # matplotlib: only when a picture is drawn
    matplotlib.use('Agg')   # files only, no display
    import matplotlib.pyplot as plt  # matplotlib: only when a picture is drawn
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    predicted, true = label_of(pred), label_of(target if target.dim() > 1 else target[:, None])
    for i, ax in enumerate(axes.flat):
        ax.axis('off')
        if i >= n:
            continue
        image = images[i].float()
        image = image[0] if image.dim() == 3 and image.shape[0] == 1 else image
        image = image.permute(1, 2, 0) if image.dim() == 3 else image   # CHW -> HWC for colour
        lo, hi = image.min(), image.max()
        ax.imshow(((image - lo) / (hi - lo if hi > lo else 1)).numpy(), cmap='gray')
        ax.set_title(f'{predicted[i]} / {true[i]}', fontsize=8, color='green' if predicted[i] == true[i] else 'red')
    fig.suptitle('predicted / true', fontsize=9)
    fig.tight_layout()
    return fig


def write_prediction_grid(exp_dir: Path, tensorboard: Optional[Any], epoch: int, step: int,
                          samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Path:
    """Save the grid of `samples` (images, predictions, targets) as samples/val_epoch_NNN.png
    (`epoch` counts from 1, as log.txt does) and, given a SummaryWriter, as the image val/samples."""
    import matplotlib.pyplot as plt  # matplotlib: only when a picture is drawn
    fig = prediction_figure(*samples)
    path = Path(exp_dir) / 'samples' / f'val_epoch_{epoch:03d}.png'
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=80)
    if tensorboard is not None:
        tensorboard.add_figure('val/samples', fig, step, close=False)
    plt.close(fig)
    return path
