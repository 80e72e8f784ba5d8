"""How these model files were written, by the code at 43302bd (format 1 and 2). Kept for the record; do
not rerun it to refresh them: they stand for files users already have."""
import sys
from pathlib import Path

import torch

from lesionseg.config import ModelConfig
from lesionseg.models import build_model, save_model

out = Path(sys.argv[1])
torch.manual_seed(0)
cfg = ModelConfig(base_width=4, depth=3)
save_model(out / "v1_plain.pt", build_model(cfg), cfg, image_size=32, card={"note": "format 1, plain U-Net"})
torch.manual_seed(1)
cfg = ModelConfig(base_width=4, depth=3, attention=True, deep_supervision=True)
save_model(out / "v1_half_cbam_tta.pt", build_model(cfg), cfg, image_size=40, half=True,
           card={"note": "format 1, fp16, CBAM + deep supervision, TTA in its card", "label": "lesion",
                 "inference": {"tta_scales": [0.75, 1.0]}})
torch.manual_seed(2)
cfg = ModelConfig(base_width=4, depth=3)
save_model(out / "v2_shades_of_grey.pt", build_model(cfg), cfg, image_size=48,
           color_constancy="shades_of_grey", card={"note": "format 2: colour constancy"})
