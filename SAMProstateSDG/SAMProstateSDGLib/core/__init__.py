"""Foundations every layer may use: errors, labels, devices, atomic files, checksums, the model catalog."""
