"""The shared segmentation pipeline: a prepared volume, coarse localisation, boxes to SAM masks."""
