"""Response bodies: an uploaded picture decoded within its limits, and the answer in the asked format
(mask, overlay, probabilities, .npy or JSON) from the model's probabilities, the mask made exactly as
`predict` makes it. One renderer: a model of one structure is the simple case of several."""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
from starlette.responses import JSONResponse, Response

from ..errors import UserError
from ..io import FAST_PNG, ImageTooLarge, NotAnImage, decode_image, encode_png, image_size, mask_to_uint8
from .http import FORMATS, HTTPError, Options, Service, header_value


def decode_photo(data: bytes, label: str, max_pixels: int,
                 preview: int | None = None) -> tuple[np.ndarray, tuple]:
    """The image (at most `preview` pixels a side when given) and the full image's (width, height)."""
    try:
        image = decode_image(data, label, max_pixels, draft=preview)
        if preview is None:
            return image, (image.shape[1], image.shape[0])
        return shrink(image, preview), image_size(data)
    except ImageTooLarge as exc:
        raise HTTPError(413, str(exc)) from None
    except NotAnImage as exc:
        raise HTTPError(415, f"{exc} (send jpg, png, bmp, tif, a DICOM image, a NIfTI volume or a zip of a "
                        "DICOM series)") from None
    except UserError as exc:
        raise HTTPError(400, str(exc)) from None


def shrink(array: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = array.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return array
    scale = max_side / max(h, w)
    return cv2.resize(array, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def describe_mask(mask: np.ndarray) -> dict:
    """Area, bounding box and outer contours (polygons of [x, y] points) of a bool mask."""
    area = int(mask.sum())
    h, w = mask.shape
    out = {"area_px": area, "area_fraction": area / (h * w), "bbox": None, "contours": []}
    if area:
        ys, xs = np.nonzero(mask)
        out["bbox"] = {"x": int(xs.min()), "y": int(ys.min()), "width": int(xs.max() - xs.min() + 1),
                       "height": int(ys.max() - ys.min() + 1)}
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out["contours"] = [c[:, 0, :].tolist() for c in sorted(contours, key=cv2.contourArea, reverse=True)]
    return out


def render(service: Service, image: np.ndarray, prob: np.ndarray, opts: Options, timings: dict,
           size: tuple[int, int]) -> Response:
    """The response body in the asked format. `size` is the uploaded image's (width, height); `image` may
    be a preview of it (overlay / prob with max_side). Masks as `predict` writes them: one structure's 0/255
    mask, an exclusive model's palette label map (with `structure`, that structure's mask); the overlay
    (with a legend for several); JSON with area, bounding box and contours (per structure for several)."""
    from ..io.writers import encode_label_map
    from ..viz import overlay, structures_overlay

    seg = service.segmenter
    labels = seg.labels
    chosen = _chosen_structure(seg, opts)
    start = time.perf_counter()
    masks = seg.to_mask(prob, image, opts.post())
    if not labels.multi:  # one structure: always the one chosen
        prob, masks = prob[None], masks[None]
    shown = masks if chosen is None else masks[chosen]
    headers = {"X-Lesionseg-Model": header_value(service.model_name()),
               "X-Image-Size": f"{size[0]}x{size[1]}",
               "X-Area-Fraction": f"{(masks.any(0) if chosen is None else shown).mean():.6f}"}
    if opts.format == "mask":
        body = encode_png(mask_to_uint8(shown)) if chosen is not None else encode_label_map(masks, labels)
    elif opts.format == "overlay":
        picture = structures_overlay(image, masks, labels) if labels.multi else overlay(image, pred=masks[0])
        body = encode_png(picture, FAST_PNG)
    elif opts.format == "prob":
        body = encode_png(np.round(prob[chosen] * 255).astype(np.uint8))
    elif opts.format == "npy":
        buf = io.BytesIO()
        np.save(buf, (prob if chosen is None else prob[chosen]).astype(np.float32))
        body = buf.getvalue()
    timings["post_ms"] = (time.perf_counter() - start) * 1000
    headers["Server-Timing"] = ", ".join(f"{k[:-3]};dur={v:.1f}" for k, v in timings.items())
    if opts.format == "json":
        payload = {"model": service.model_name(), "image": {"width": size[0], "height": size[1]},
                   "options": opts.shown()}
        if labels.multi:
            names = labels.names if chosen is None else [labels.names[chosen]]
            payload.update(label_mode=labels.mode, structures={
                n: {**describe_mask(masks[labels.index(n)]),
                    "color": list(labels.structures[labels.index(n)].color)} for n in names})
        else:
            payload.update(describe_mask(masks[0]))
        payload["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
        return JSONResponse(payload, headers=headers)
    return Response(body, media_type=FORMATS[opts.format], headers=headers)


def _chosen_structure(seg, opts: Options) -> int | None:
    """The structure a response is about: `structure=` by name (a model of one: its own, always)."""
    labels = seg.labels
    if not labels.multi:
        if opts.structure is not None and opts.structure != seg.label:
            raise HTTPError(400, f"query parameter 'structure': this model segments one structure "
                            f"({seg.label}), not {opts.structure!r}")
        return 0
    try:
        chosen = None if opts.structure is None else labels.index(opts.structure)
    except UserError as exc:
        raise HTTPError(400, f"query parameter 'structure': {exc}") from None
    one_picture = opts.format == "prob" or (opts.format == "mask" and labels.mode == "overlapping")
    if chosen is None and one_picture:
        raise HTTPError(400, f"query parameter 'structure': this model's {len(labels.names)} structures "
                        f"({'overlap' if labels.mode == 'overlapping' else 'are several'}): ask for one of "
                        f"{', '.join(labels.names)} for format={opts.format}, or use format=json")
    return chosen
