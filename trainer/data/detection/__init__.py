"""Object-detection datasets: Pascal VOC XML, COCO JSON and YOLO txt readers, and their transforms.

Pure numpy + PIL + stdlib (no torch), like :mod:`trainer.data`::

    ds = open_detection_dataset("~/data/raccoon-train")
    ds.classes                      # ['raccoon']
    sample = ds.train.load(0)       # image uint8 [H, W, 3], boxes float32 [N, 4] xyxy pixels, labels int64 [N]
"""

from .dataset import SUPPORTED_LAYOUTS, open_detection_dataset
from .transforms import DetectionAugment, LetterboxInfo, collate, letterbox, undo_letterbox
from .types import DetectionDataset, DetectionSample, DetectionSplit

__all__ = [
    "SUPPORTED_LAYOUTS", "DetectionAugment", "DetectionDataset", "DetectionSample", "DetectionSplit",
    "LetterboxInfo", "collate", "letterbox", "open_detection_dataset", "undo_letterbox",
]
