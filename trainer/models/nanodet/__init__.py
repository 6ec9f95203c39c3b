"""NanoDet-style detectors (ShuffleNetV2 + Ghost-PAN + GFL head) and the ShuffleNetV2 classifier."""

from trainer.models.nanodet.detector import (
    DETECTOR_BUILDERS,
    DETECTOR_SPECS,
    NanoDet,
    NanoDetSpec,
    detector_names,
    detector_spec,
    is_detector,
)
from trainer.models.nanodet.shufflenet import ShuffleNetV2Backbone, ShuffleNetV2Classifier, shufflenetv2

__all__ = [
    "DETECTOR_BUILDERS", "DETECTOR_SPECS", "NanoDet", "NanoDetSpec", "ShuffleNetV2Backbone",
    "ShuffleNetV2Classifier", "detector_names", "detector_spec", "is_detector", "shufflenetv2",
]
