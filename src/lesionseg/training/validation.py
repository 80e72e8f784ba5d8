"""Validation on whole volumes, as `evaluate` scores them: the network being trained segments each
validation volume through the one inference path (`inference.volume_coverage`: every slice, on the
volume's own grid, thresholds and clean-up as `predict` applies them by default) and each case is scored in
3-D per structure, a structure absent from both truth and prediction left out. The figure is `evaluate`'s
headline (`mean_jaccard`, `mean_dice` of metrics.json), so selection looks at what users will be shown; a
model that segments nothing scores 0 on every case that holds a structure, never 'perfect'."""

from __future__ import annotations

import numpy as np

from ..inference import InferenceOptions, Segmenter
from ..inference.backends import Backend
from ..inference.volume_coverage import segment_volume
from ..labels import Labels
from ..metrics import headline, overlap_scores
from ..model_file import ModelFile, Preprocessing


class LiveBackend(Backend):
    """The network being trained, run as a backend runs a model file's (no copy, no mode change: the
    caller holds it in eval mode)."""

    name = "torch (training)"

    def __init__(self, network, file: ModelFile, device, memory_format):
        self.network, self.file, self.device, self.memory_format = network, file, device, memory_format

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.memory_format)
            return self.network(x).float().cpu().numpy()


def score_volumes(network, labels: Labels, preprocessing: Preprocessing, cases: list, device,
                  memory_format) -> dict[str, float]:
    """`evaluate`'s mean Jaccard and mean Dice of `network` on `cases` (pairs.LabelledCase), how many of
    the cases that hold a structure it left blank, and the structures some case holds that it segmented in
    none."""
    backend = LiveBackend(network, ModelFile(None, preprocessing, labels=labels), device, memory_format)
    segmenter = Segmenter(backend, InferenceOptions(tta=False))
    per_case, blank = [], 0
    held = found = np.zeros(len(labels.structures), bool)
    for case in cases:
        pred = segment_volume(segmenter, case.image)
        per_case.append([overlap_scores(pred == s.value, case.truth == s.value) for s in labels.structures])
        blank += int(not pred.any() and bool(case.truth.any()))
        held = held | [bool((case.truth == s.value).any()) for s in labels.structures]
        found = found | [bool((pred == s.value).any()) for s in labels.structures]
    return {"jaccard": headline(per_case, "jaccard"), "dice": headline(per_case, "dice"),
            "blank": blank, "with_structures": sum(int(c.truth.any()) for c in cases),
            "never_segmented": [s.name for s, h, f in zip(labels.structures, held, found) if h and not f]}
