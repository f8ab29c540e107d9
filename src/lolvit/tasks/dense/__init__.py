"""Dense prediction: offline data generators, detection/segmentation loaders, SSD and the
drivable-area + lane multi-task head. Optional dependencies are imported inside functions."""
