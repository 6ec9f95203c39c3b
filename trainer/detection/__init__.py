"""Object detection: boxes, losses, assigners, post-processing and the COCO mAP metric."""
