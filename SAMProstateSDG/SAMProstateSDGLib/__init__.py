"""SAMProstateSDG backend: prostate segmentation on T2 MRI with SAM prompted by a coarse network."""
