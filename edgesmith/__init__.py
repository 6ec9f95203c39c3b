"""EdgeSmith: train a vision model and take it to an edge device.

This module stays import-light on purpose: every package imports
``edgesmith.errors``, and devices run parts of EdgeSmith without torch.
"""

__version__ = "0.1.0"
