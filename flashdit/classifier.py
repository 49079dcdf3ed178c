"""Class-conditional accuracy for small datasets far from ImageNet: a small CNN trained on the real
training images judges whether a sample drawn for class y looks like class y.

The recipe (Fashion-MNIST, 32×32 padded, values in [-1, 1]): three conv stages with batch norm,
global average pooling, AdamW 2e-3, batch 128, 2 epochs with random flips, about 5 minutes on 2 CPU
cores, then batch-norm statistics recomputed with the final weights; its accuracy on the real test set
is stored beside the weights and reported with every score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .data import load_idx_split, pad_images
from .utils import CACHE_DIR, atomic_path

JUDGE_CACHE = CACHE_DIR / "fashion_mnist_classifier.safetensors"


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()

        def stage(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *stage(in_channels, 32),
            *stage(32, 32),
            nn.MaxPool2d(2),
            *stage(32, 64),
            *stage(64, 64),
            nn.MaxPool2d(2),
            *stage(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    preds = [model(to_input(images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(preds).numpy()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> SmallCNN:
    """Train the recipe on uint8 ``(N, H, W, C)`` images."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(images.shape[-1], num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    x_all, y_all = to_input(images), torch.from_numpy(labels).long()
    model.train()
    with tqdm(total=steps, desc="classifier", unit="step") as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(images), generator=g)
            for b in range(len(images) // batch_size):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                x = x_all[idx]
                flip = torch.rand(len(idx), generator=g) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.cross_entropy(model(x), y_all[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    _recalibrate_batchnorm(model, x_all[torch.randperm(len(images), generator=g)[:4096]], batch_size)
    return model.eval()


@torch.no_grad()
def _recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Replace the running batch-norm statistics by exact averages over ``x`` with the final weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    model.eval()


def fashion_mnist_classifier(cache: str | Path = JUDGE_CACHE, epochs: int = 2) -> tuple[SmallCNN, float]:
    """The Fashion-MNIST judge: loaded from ``cache`` (a .safetensors with a .json beside it) or trained
    and saved there (about 5 minutes on 2 CPU cores). Returns the model and its accuracy on the real test set."""
    cache = Path(cache)
    meta_path = cache.with_suffix(".json")
    model = SmallCNN(1, 10)
    if cache.is_file() and meta_path.is_file():
        model.load_state_dict(load_file(cache))
        return model.eval(), json.loads(meta_path.read_text())["test_accuracy"]
    train_x, train_y = load_idx_split(None, "train")
    test_x, test_y = load_idx_split(None, "test")
    model = train_classifier(pad_images(train_x, 32), train_y, 10, epochs=epochs)
    acc = float((predict(model, pad_images(test_x, 32)) == test_y).mean())
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        save_file(model.state_dict(), tmp)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps({"test_accuracy": acc, "epochs": epochs, "recipe": "flashdit.classifier.SmallCNN"}))
    return model, acc


def class_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> dict:
    """Fraction of samples drawn for class y that the classifier assigns to y, overall and per class."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    pred = predict(model, images)
    per_class = {int(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"class_accuracy": float((pred == labels).mean()), "class_accuracy_per_class": per_class}


def load_judge(which: str, channels: int, num_classes: int) -> tuple[SmallCNN, float | None]:
    """A classifier to score samples with: ``"fashion-mnist"`` (the cached judge, trained on first use) or a
    ``SmallCNN`` ``.safetensors`` file (its test accuracy read from the ``.json`` beside it, when present)."""
    if which == "fashion-mnist":
        return fashion_mnist_classifier()
    path = Path(which)
    if not path.is_file():
        raise FileNotFoundError(f"classifier {which}: no such file (or use 'fashion-mnist')")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    model = SmallCNN(channels, num_classes)
    model.load_state_dict(load_file(path))
    return model.eval(), meta.get("test_accuracy")


def score_class_accuracy(which: str, images: np.ndarray, labels: np.ndarray) -> dict:
    """:func:`class_accuracy` of the judge ``which`` (see :func:`load_judge`) on uint8 NHWC ``images``, plus
    the judge's own accuracy on real test images (``classifier_test_accuracy``)."""
    model, test_acc = load_judge(which, images.shape[-1], int(labels.max()) + 1)
    return {**class_accuracy(model, images, labels), "classifier_test_accuracy": test_acc}
