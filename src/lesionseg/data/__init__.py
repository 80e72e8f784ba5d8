"""Data: pre-processing (torch-free), training augmentation, datasets. Submodules import lazily what they
need."""
