"""The method registry and one module per segmentation method (inference and trainer)."""
