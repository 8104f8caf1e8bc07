"""Explorer for lesson 07-convnet: the eval-mode pitfall, batch by batch.

``eval_batch_explorer(model, x, y)`` evaluates a trained BN convnet on test batches of a chosen
size, drawn either shuffled or *sorted by class* (how a data loader without shuffling, or a
stream of similar images, hands them over). In training mode BN normalizes each batch with its
own statistics, so a prediction depends on the other images in the batch: with small or
class-sorted batches accuracy collapses. In eval mode BN uses fixed population statistics and
the answer is the same for any batching.
"""
from __future__ import annotations

import copy

from minibn.widgets import explore

__all__ = ["batched_accuracy", "eval_batch_explorer"]


def batched_accuracy(model, x, y, batch_size, sort_by_class, train_mode):
    """Accuracy of ``model`` on ``(x, y)`` split into batches, in train or eval mode (on a copy)."""
    import torch

    m = copy.deepcopy(model)
    m.train(train_mode)
    order = torch.argsort(y, stable=True) if sort_by_class else torch.arange(len(y))
    x, y = x[order], y[order]
    with torch.no_grad():
        preds = torch.cat([m(b).argmax(1) for b in x.split(batch_size)])
    return (preds == y).float().mean().item()


def eval_batch_explorer(model, x, y, batch_size=100, sort_by_class=True):
    """Slider for the evaluation batch size, checkbox for class-sorted batches."""
    import ipywidgets as w

    def draw(batch_size, sort_by_class):
        import matplotlib.pyplot as plt

        accs = [batched_accuracy(model, x, y, batch_size, sort_by_class, mode)
                for mode in (True, False)]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        bars = ax.bar(["train mode\n(batch statistics)", "eval mode\n(population statistics)"],
                      accs, color=["C3", "C0"])
        ax.bar_label(bars, fmt="%.3f")
        ax.set(ylim=(0, 1.05), ylabel="test accuracy",
               title=f"batches of {batch_size}, {'sorted by class' if sort_by_class else 'shuffled'}")
        fig.tight_layout()
        plt.show()

    explore(draw,
            batch_size=w.IntSlider(value=batch_size, min=2, max=500, step=1, description="batch"),
            sort_by_class=w.Checkbox(value=sort_by_class, description="sorted by class"))
