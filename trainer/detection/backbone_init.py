"""``--init-backbone RUN_DIR``: start a detector from the ShuffleNetV2 of a classifier run.

No ImageNet weights are reachable, so a ShuffleNetV2 classifier trained by EdgeSmith
(e.g. on CIFAR-10 or the user's image folder) provides the backbone. Its EMA weights are
used when the run kept them (those are what the run shipped).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgesmith.errors import CheckpointError
from trainer.checkpoint import load_checkpoint

PREFIX = "backbone."


def init_backbone_from_run(model: nn.Module, run_dir: str | Path) -> int:
    """Copy the ``backbone.*`` weights of the checkpoint in ``run_dir`` into ``model``; returns the tensor count.

    CheckpointError when the run is not a ShuffleNetV2 (classifier or detector) or its
    backbone does not fit (a different ``width_mult`` or input channels).
    """
    ckpt = load_checkpoint(run_dir, load_optimizer=False)
    source = {k[len("ema."):]: v for k, v in ckpt.extra_tensors.items() if k.startswith("ema.")} or ckpt.state_dict
    weights = {k[len(PREFIX):]: v for k, v in source.items() if k.startswith(PREFIX)}
    if not weights:
        raise CheckpointError(
            f"--init-backbone {run_dir}: that run is a '{ckpt.model_name}' model without ShuffleNetV2 backbone "
            "weights; train one first, e.g. `edgesmith train --model shufflenetv2 --width-mult "
            f"{model_width(model)} --data IMAGE_FOLDER` and pass its run directory"
        )
    target = model.backbone.state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    shapes = [f"{k}: run {tuple(weights[k].shape)}, detector {tuple(target[k].shape)}"
              for k in target if k in weights and weights[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        width = ckpt.model_args.get("width_mult")
        details = "; ".join(part for part in (
            f"missing {len(missing)} (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
            f"shape mismatches {len(shapes)} (e.g. {'; '.join(shapes[:3])})" if shapes else "") if part)
        raise CheckpointError(
            f"--init-backbone {run_dir}: the backbone of that '{ckpt.model_name}' run (width_mult {width}) does not "
            f"fit this detector (width_mult {model_width(model)}): {details}. Use a run trained with the same "
            "--width-mult and 3-channel images"
        )
    model.backbone.load_state_dict(weights, strict=True)
    return len(weights)


def model_width(model: nn.Module) -> float | str:
    """The ShuffleNetV2 width multiplier of a detector, read from its stage channels."""
    from trainer.models.nanodet.shufflenet import STAGE_CHANNELS

    chans = list(getattr(model.backbone, "out_channels", []))
    for width, stage in STAGE_CHANNELS.items():
        if stage[1:] == chans:
            return width
    return "?"
