"""Scoring generated digits: a scikit-learn classifier trained on the real digits' training
split (8x8, the digits' own resolution), its class consistency on samples, and a Fréchet
distance between its hidden-layer features of samples and of held-out real digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from leapdec.images import data


@dataclass
class DigitsJudge:
    """An ``MLPClassifier`` (one hidden ReLU layer) on 8x8 digits scaled to 0..1."""

    clf: object
    heldout_accuracy: float
    heldout_features: np.ndarray

    @staticmethod
    def _x(images_8x8) -> np.ndarray:
        if isinstance(images_8x8, torch.Tensor):
            images_8x8 = images_8x8.detach().float().cpu().numpy()
        return np.asarray(images_8x8, dtype=np.float64).reshape(len(images_8x8), -1) / data.MAX_VALUE

    def predict(self, images_8x8) -> np.ndarray:
        return self.clf.predict(self._x(images_8x8))

    def consistency(self, images_8x8, labels) -> float:
        """Share of images the classifier assigns to their conditioning label."""
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        return float((self.predict(images_8x8) == labels).mean())

    def features(self, images_8x8) -> np.ndarray:
        """The hidden layer's activations ``[n, hidden]``."""
        x = self._x(images_8x8)
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def frechet(self, images_8x8) -> float:
        """Fréchet distance between the features of ``images_8x8`` and of the held-out digits."""
        return frechet_distance(self.features(images_8x8), self.heldout_features)


def train_judge(seed: int = 0, hidden: int = 64) -> DigitsJudge:
    """Train the judge on the training split; report its held-out accuracy."""
    from sklearn.neural_network import MLPClassifier

    train, held = data.split_digits()
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=600, random_state=seed)
    clf.fit(DigitsJudge._x(train.images), train.labels.numpy())
    judge = DigitsJudge(clf, 0.0, np.zeros(0))
    judge.heldout_accuracy = float((judge.predict(held.images) == held.labels.numpy()).mean())
    judge.heldout_features = judge.features(held.images)
    return judge


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)`` of two feature sets (FID's formula)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    # a little ridge keeps the product well-conditioned (dead ReLU units make it singular)
    eps = np.eye(a.shape[1]) * 1e-6
    s_a, s_b = np.cov(a, rowvar=False) + eps, np.cov(b, rowvar=False) + eps
    covmean = linalg.sqrtm(s_a @ s_b)
    covmean = np.asarray(covmean).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))
