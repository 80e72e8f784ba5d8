"""Reading inputs and writing results, one module per concern:

- `registry`: input formats as `Reader` classes chosen by suffix and content (`read_input`);
- `photo`: jpg/png/bmp/tif through Pillow, `second_readers` (tifffile, OpenCV) behind it;
- `dicom`: DICOM frames in, DICOM SEG out;
- `masks`: binary masks;
- `writers`: PNG encoding and mask files; `atomic`: the one place files are written atomically.
"""

from .atomic import atomic_path, write_bytes, write_csv, write_text
from .masks import JPEG_MASK_NOISE, JPEG_MASK_THRESHOLD, read_label_map, read_mask
from .photo import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageTooLarge,
    NotAnImage,
    decode_image,
    image_size,
    read_image,
)
from .registry import (
    READERS,
    Input,
    Reader,
    check_unique_ids,
    list_images,
    read_input,
    reader_by_name,
    reader_for,
)
from .writers import FAST_PNG, encode_png, mask_to_uint8, write_mask, write_png

__all__ = [
    "FAST_PNG", "IMAGE_EXTENSIONS", "ImageTooLarge", "Input", "JPEG_MASK_NOISE", "JPEG_MASK_THRESHOLD",
    "MAX_PIXELS", "NotAnImage", "READERS", "Reader", "atomic_path", "check_unique_ids", "decode_image",
    "encode_png", "image_size", "list_images", "mask_to_uint8", "read_image",
    "read_input", "read_label_map", "read_mask", "reader_by_name", "reader_for", "write_bytes", "write_csv",
    "write_mask",
    "write_png", "write_text",
]
