"""Synthetic data and the demo model: KiTS-style phantoms, training cases, training."""
