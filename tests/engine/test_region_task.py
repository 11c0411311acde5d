"""Region-based training pieces: the plan's outputs, the loss, the validation's Dice per region."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medzoo.engine.regions import region_plan, training_loss, validate_regions, validation_logs
from medzoo.errors import DataError
from medzoo.losses import BCEDiceLoss, DeepSupervisionLoss, DiceCELoss
from medzoo.planning.plan import Plan
from medzoo.utils import IGNORE_INDEX

REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


class Nested(nn.Module):
    """Logits 10 * (x - t), t = 0, 0.5, 1 (regions nested by image intensity)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.fill_(10.0)
            self.conv.bias.copy_(torch.tensor([0.0, -5.0, -10.0]))

    def forward(self, x):
        return self.conv(x)


def _plan(**kw):
    base = dict(model="unet3d", in_channels=1, num_classes=4, patch_size=(8, 8, 8),
                labels={0: "background", 1: "a", 2: "b", 3: "c"})
    base.update(kw)
    return Plan(**base)


def test_region_plan_outputs_one_channel_per_region():
    info = SimpleNamespace(root="d", regions=REGIONS, regions_class_order=[1, 2, 3])
    plan = region_plan(_plan(), info)
    assert plan.num_classes == 3 and plan.regions == REGIONS and plan.regions_class_order == [1, 2, 3]
    assert region_plan(_plan(), SimpleNamespace(root="d", regions=None)).regions is None
    with pytest.raises(DataError, match="regions_class_order"):
        region_plan(_plan(), SimpleNamespace(root="d", regions=REGIONS, regions_class_order=None))


def test_training_loss_follows_the_plan():
    assert isinstance(training_loss("dice_ce", _plan(), ignore=False), DiceCELoss)
    region = training_loss("dice_ce", _plan(num_classes=3, regions=REGIONS, regions_class_order=[1, 2, 3]),
                           ignore=True)  # fmt: skip
    assert isinstance(region, BCEDiceLoss) and region.bce.ignore_index == IGNORE_INDEX
    target = torch.tensor([[[[0, 1], [2, 3]]]]).expand(1, 2, 2, 2).clone()
    target[0, 0, 0, 0] = IGNORE_INDEX
    logits = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    DeepSupervisionLoss(region)([logits], target).backward()
    assert logits.grad[0, :, 0, 0, 0].abs().sum() == 0  # the ignored voxel


def test_validate_regions_scores_each_region():
    plan = _plan(num_classes=3, regions=REGIONS, regions_class_order=[1, 2, 3], batch_size=1)
    values = np.array([-1.0, 0.2, 0.7, 1.5], np.float32)  # none, WT, WT+TC, all three
    image = np.repeat(values, 4)[:, None, None] * np.ones((1, 8, 8), np.float32)
    label = np.repeat([0, 1, 2, 3], 4)[:, None, None] * np.ones((1, 8, 8), np.uint8)
    label[-4:] = 2  # the reference says the core ends before the last block: ET predicted there is wrong
    label[0, 0, 0] = IGNORE_INDEX
    case = SimpleNamespace(image=image[None], label=label)
    result = validate_regions(Nested(), [case], plan, torch.device("cpu"), keep_example=True)
    assert result.dice_per_class[0] == pytest.approx(1.0) and result.dice_per_class[1] == pytest.approx(1.0)
    assert result.dice_per_class[2] == 0.0
    logs = validation_logs(result, plan)
    assert set(logs) == {"val_dice_mean", "val_dice_WT", "val_dice_TC", "val_dice_ET"}
    assert logs["val_dice_mean"] == pytest.approx(2 / 3)
