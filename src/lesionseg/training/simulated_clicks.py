"""Training a promptable network (model.prompt clicks): each batch gets clicks placed as RITM and DeepEdit
train, by the same simulated user that `evaluate --clicks` follows (clicks.next_click).

A batch draws how many clicks its samples get, none for some batches, so the model without clicks keeps
being trained. Each sample clicks on one structure it holds (drawn alike); the clicks are placed one after
another, each at the deepest error of the model's own prediction given the clicks before it (in eval mode,
without gradients), and the batch then trains with all of them as its prompt channels."""

from __future__ import annotations

import numpy as np
import torch

from ..clicks import Click, click_maps, click_radius, next_click
from ..labels import IGNORED

CLICKS_DRAWN = (0, 1, 2, 3)  # clicks per sample in a batch
CLICKS_WEIGHTS = (0.25, 0.35, 0.25, 0.15)  # mean 1.3: a no-gradient forward pass per click


def truth_channels(y: torch.Tensor, mode: str) -> torch.Tensor:
    """Bool (N, structures, ...) truth from a training target, ignored pixels false."""
    return y > 0.5 if mode == "binary" else (y == 1)


class SimulatedClicks:
    """`predicted`: logits → bool (N, structures, ...) as training scores them (module.predicted_channels)."""

    def __init__(self, structures: int, mode: str, predicted, seed: int = 0):
        self.structures, self.mode, self.predicted = structures, mode, predicted
        self.rng = np.random.default_rng(seed)

    def prompts(self, clicks: list[tuple[int, list[Click]]], shape: tuple[int, ...]) -> np.ndarray:
        """(N, 2 × structures, *shape) prompt channels: each sample's clicks on its structure's pair."""
        out = np.zeros((len(clicks), 2 * self.structures, *shape), np.float32)
        radius = click_radius(shape)
        for i, (k, placed) in enumerate(clicks):
            out[i, 2 * k:2 * k + 2] = click_maps(shape, placed, radius)
        return out

    @torch.no_grad()
    def __call__(self, network: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 n_clicks: int | None = None) -> torch.Tensor:
        """`x` with its prompt channels appended, `n_clicks` (drawn when None) placed on `network`'s
        predictions."""
        if n_clicks is None:
            n_clicks = int(self.rng.choice(CLICKS_DRAWN, p=CLICKS_WEIGHTS))
        shape = tuple(x.shape[2:])
        truth = truth_channels(y, self.mode).cpu().numpy()
        valid = (y != IGNORED).cpu().numpy() if self.mode != "binary" else np.ones_like(truth)
        clicks = []
        for sample in truth:
            held = np.flatnonzero(sample.reshape(len(sample), -1).any(axis=1))
            clicks.append((int(self.rng.choice(held)) if len(held) else 0, []))
        prompted = torch.cat([x, torch.from_numpy(self.prompts(clicks, shape)).to(x)], dim=1)
        if n_clicks == 0:
            return prompted
        was_training = network.training
        network.eval()
        try:
            for _ in range(n_clicks):
                pred = self.predicted(network(prompted), self.mode).cpu().numpy()
                for i, (k, placed) in enumerate(clicks):
                    click = next_click(pred[i, k] & valid[i, k], truth[i, k] & valid[i, k], placed)
                    if click is not None:
                        placed.append(click)
                prompted[:, x.shape[1]:] = torch.from_numpy(self.prompts(clicks, shape)).to(x)
        finally:
            network.train(was_training)
        return prompted
