"""Training with Lightning. Imported lazily: prediction never needs Lightning."""
