"""Image classification on Fashion-MNIST: partitions, local SGD with soft targets, evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache, partial
from typing import Any

import numpy as np
import torch

from fedcore import ModelSpec, Truth
from fedcore.sgd import sgd_step
from fedsim.data.fashion_mnist import check_fashion_mnist, load_fashion_mnist
from fedsim.data.partition import partition_indices
from fedsim.models import model_builder
from fedsim.tasks.base import TrainConfig, TrainResult
from fedsim.training import capture_last_layer_input, soft_cross_entropy, soft_targets

__all__ = ["ImageTask"]

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics (after scaling to [0, 1])


def _normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 `(n, 1, 28, 28)` -> float32, standardised with the data set's mean and std."""
    return (torch.from_numpy(images).float() / 255.0 - MEAN) / STD


class ImageTask:
    """Fashion-MNIST classification (10 classes) with a model from `fedsim.models.image`.

    Args:
        model: a model node (`conf/model/<name>.yaml`: `_target_`, its options, `task: image`),
            e.g. `{"_target_": "fedsim.models.image.LeNet", "activation": "tanh"}`, or a
            builder `f(num_classes) -> nn.Module`. The built model names its final
            `nn.Linear` in `last_layer`. Default: LeNet.
        partition: "iid" or "dirichlet"; alpha: the Dirichlet concentration.
        eval_samples: test images used per evaluation (a fixed seeded subset; 0 = all 10,000).
        seed: seeds partitions and the evaluation subset.
        data_root: folder with the IDX gz files (default: the Debian package's folder).
    """

    name = "image"
    num_classes = 10

    def __init__(
        self,
        model: Mapping[str, Any] | Callable[..., torch.nn.Module] | None = None,
        partition: str = "iid",
        alpha: float = 0.5,
        eval_samples: int = 1000,
        seed: int = 0,
        data_root: str | None = None,
    ) -> None:
        model = {"_target_": "fedsim.models.image.LeNet"} if model is None else model
        self.model_name, self._build = model_builder(model, self.name)
        self.partition, self.alpha, self.seed = partition, alpha, seed
        self.eval_samples, self.data_root = eval_samples, data_root
        net = self._build(num_classes=self.num_classes)  # fail fast on bad options
        self.last_layer = getattr(net, "last_layer", None)
        if not isinstance(self.last_layer, str) or not isinstance(
            net.get_submodule(self.last_layer), torch.nn.Linear
        ):
            raise ValueError(
                f"model {self.model_name} must name its final nn.Linear in `last_layer`, "
                f"got {self.last_layer!r}"
            )
        check_fashion_mnist(data_root)
        if partition not in ("iid", "dirichlet"):
            raise ValueError(f"unknown partition {partition!r}; use 'iid' or 'dirichlet'")

    def model_spec(self) -> ModelSpec:
        last = self.last_layer
        return ModelSpec(
            task=self.name,
            name=self.model_name,
            num_classes=self.num_classes,
            last_weight=f"{last}.weight",
            last_bias=f"{last}.bias",
            build=partial(self._build, num_classes=self.num_classes),
            input_shape=(1, 28, 28),
        )

    @cache  # noqa: B019 (one task object per process)
    def _partitions(self, num_partitions: int) -> list[np.ndarray]:
        labels = load_fashion_mnist("train", self.data_root).labels
        return partition_indices(labels, num_partitions, self.partition, self.alpha, self.seed)

    def local_train(
        self,
        model: torch.nn.Module,
        partition_id: int,
        num_partitions: int,
        config: TrainConfig,
        device: torch.device,
    ) -> TrainResult:
        data = load_fashion_mnist("train", self.data_root)
        own = self._partitions(num_partitions)[partition_id]
        k, n = config.local_steps, config.batch_size
        rng = np.random.default_rng([config.seed, config.round, partition_id])
        picks = rng.choice(own, size=(k, n), replace=len(own) < k * n)
        partners = rng.choice(own, size=(k, n)) if config.mixup_alpha > 0 else None
        weights = (
            rng.beta(config.mixup_alpha, config.mixup_alpha, (k, n))
            if partners is not None
            else None
        )

        model.to(device).train()
        last = model.get_submodule(self.last_layer)
        losses, targets, inputs = [], [], []
        with capture_last_layer_input(last) as features:
            for step in range(k):
                x = _normalise(data.images[picks[step]])
                y = torch.from_numpy(data.labels[picks[step]])
                partner_y = mix = None
                if partners is not None:
                    mix = torch.from_numpy(weights[step]).float()
                    w = mix.view(-1, 1, 1, 1)
                    x = w * x + (1 - w) * _normalise(data.images[partners[step]])
                    partner_y = torch.from_numpy(data.labels[partners[step]])
                target = soft_targets(y, self.num_classes, config.label_smoothing, partner_y, mix)
                loss = soft_cross_entropy(model(x.to(device)), target.to(device))
                sgd_step(model, loss, config.lr)
                losses.append(float(loss.detach()))
                targets.append(target.numpy())
                inputs.append(x.numpy())
        soft = config.label_smoothing > 0 or partners is not None
        truth = Truth(
            labels=data.labels[picks],
            soft_labels=np.stack(targets) if soft else None,
            inputs=np.stack(inputs) if config.keep_inputs else None,
            features=features.stacked() if config.keep_inputs else None,
        )
        return TrainResult(k * n, {"train_loss": float(np.mean(losses))}, truth)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        test = load_fashion_mnist("test", self.data_root)
        idx = np.arange(len(test))
        if 0 < self.eval_samples < len(test):
            idx = np.sort(np.random.default_rng(self.seed).choice(idx, self.eval_samples, False))
        model.to(device).eval()
        loss_sum, correct = 0.0, 0
        for chunk in np.array_split(idx, max(1, len(idx) // 500)):
            logits = model(_normalise(test.images[chunk]).to(device))
            y = torch.from_numpy(test.labels[chunk]).to(device)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return {"accuracy": correct / len(idx), "loss": loss_sum / len(idx)}
