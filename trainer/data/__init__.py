"""Dataset readers: format detection, CIFAR-10 / ImageFolder / synthetic readers, the uint8 cache, download.

Pure numpy + PIL + stdlib (no torch), so reading data works without the
training stack::

    ds = open_dataset("~/data/cifar10", cache_dir="/tmp/cache")
    ds.train.images.shape   # (50000, 32, 32, 3) uint8 NHWC RGB
"""

from .cifar import CIFAR10_CLASSES
from .dataset import open_dataset
from .imagefolder import load_images_for_inference
from .types import ArraySplit, Dataset, FileSplit

__all__ = ["ArraySplit", "CIFAR10_CLASSES", "Dataset", "FileSplit", "load_images_for_inference", "open_dataset"]
