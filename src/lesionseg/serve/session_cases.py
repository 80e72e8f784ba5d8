"""What an annotation session holds, one class per kind of case: a photo (or radiograph) is a one-slice case,
a volume (NIfTI, DICOM series) one of many slices, shown and clicked slice by slice in the model's slice
order (the coverage's stack). Each runs the model on the clicks so far, draws a slice for the page, and
saves itself with its masks in the layout `lesionseg train` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..clicks import Click
from ..io import encode_png
from ..labels import DECLARATION_FILE, read_dataset_json
from ..pairs import MASK_SUFFIX
from .http import HTTPError


class PhotoCase:
    """A photo or radiograph: one slice; clicks are (structure, Click at (0, row, col))."""

    def __init__(self, image: np.ndarray):
        self.image = image

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, *self.image.shape[:2])

    def model_masks(self, segmenter, whole, clicks) -> np.ndarray:
        """bool (structures, 1, H, W): the model's masks given `clicks`; `whole` runs the network."""
        on_image = [(k, Click(c.position[1:], c.positive)) for k, c in clicks]
        prob = whole.clicked(self.image, on_image, segmenter.click_channels()) if clicks else \
            whole.probabilities([self.image], False, segmenter.tta_scales, 1)[0]
        masks = segmenter.to_mask(prob, self.image)
        return np.array(masks if segmenter.labels.multi else masks[None], dtype=bool)[:, None]

    def slice_png(self, index: int) -> bytes:
        return encode_png(self.image, 1)

    def files(self, folder: Path, name: str, masks: np.ndarray, labels) -> dict[Path, bytes]:
        """images/NAME.png and masks/NAME_segmentation.png for one structure, masks/STRUCTURE/NAME.png for
        several."""
        files = {folder / "images" / f"{name}.png": encode_png(self.image)}
        pngs = [encode_png(mask[0].astype(np.uint8) * 255) for mask in masks]
        if labels.multi:
            files.update({folder / "masks" / structure / f"{name}.png": png
                          for structure, png in zip(labels.names, pngs)})
        else:
            files[folder / "masks" / f"{name}{MASK_SUFFIX}.png"] = pngs[0]
        return files


class VolumeCase:
    """A volume: clicks are (structure, Click at (slice, row, col)) in the model's slice order; a slice
    model's click refines the slice it is on, a 3-D model's the whole volume (`coverage.clicked`). The
    model's probabilities without clicks are computed once, at opening."""

    def __init__(self, volume, coverage, ct: bool):
        self.volume, self.coverage, self.ct = volume, coverage, ct  # ct: the model normalises as CT
        self.alone = coverage.probabilities()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.coverage.stack_shape

    def model_masks(self, segmenter, whole, clicks) -> np.ndarray:
        """bool (structures, slices, rows, cols) in slice order."""
        probs = self.coverage.clicked(self.alone, clicks) if clicks else self.alone
        stacked = self.coverage.stack_labels(probs, segmenter.post)
        return np.stack([stacked == s.value for s in segmenter.labels.structures])

    def slice_png(self, index: int) -> bytes:
        return encode_png(self.coverage.display_slice(index), 1)

    def files(self, folder: Path, name: str, masks: np.ndarray, labels) -> dict[Path, bytes]:
        """images/NAME.nii.gz (the volume as read) and labels/NAME.nii.gz (the label map on its grid), with
        the dataset.json that declares the structures when the folder has none; one that declares others is
        refused."""
        from ..io.volumes import gzip_bytes, nifti_bytes, nifti_image
        from ..io.writers import label_map

        labels_on_grid = self.coverage.to_source(label_map(masks, labels))
        files = {folder / "images" / f"{name}.nii.gz": gzip_bytes(nifti_image(self.volume.array,
                                                                                 self.volume).to_bytes()),
                 folder / "labels" / f"{name}.nii.gz": nifti_bytes(labels_on_grid, self.volume)}
        declared = {"background": 0, **{s.name: s.value for s in labels.structures}}
        existing = read_dataset_json(folder)
        if existing is None:
            doc: dict = {"labels": declared}
            modality = self.volume.modality or ("CT" if self.ct else None)
            if modality:
                doc["channel_names"] = {"0": modality}
            files[folder / DECLARATION_FILE] = (json.dumps(doc, indent=1) + "\n").encode()
        elif existing.get("labels") != declared:
            raise HTTPError(409, f"{folder / DECLARATION_FILE} declares other labels "
                            f"({existing.get('labels')}) than this model's ({declared}): save into another "
                            "folder")
        return files
