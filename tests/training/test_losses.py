import math

import pytest
import torch
import torch.nn.functional as F

from codebase.training.losses import (
    FocalLoss,
    SegmentationLoss,
    classification_loss,
    gate_entropy,
    gate_load_balance,
    gate_sparsity,
)

LN2 = math.log(2)


def close(value, expected, tol=1e-5):
    return abs(float(torch.as_tensor(value).detach()) - expected) < tol


def test_focal_loss_hand_made_values():
    # p = 1/2: (1 - 1/2)^2 * ln 2
    assert close(FocalLoss(gamma=2)(torch.zeros(1, 2), torch.tensor([0])), 0.25 * LN2)
    # sample 1: p = 3/4 -> (1/4)^2 * -ln(3/4); sample 2: p = 1/2 -> (1/2)^2 * ln 2; class weights 1 and 3
    logits, targets = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    expected = (0.0625 * -math.log(0.75) + 3 * 0.25 * LN2) / 4
    assert close(FocalLoss(gamma=2, class_weights=[1.0, 3.0])(logits, targets), expected)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(32, 5) * 3, torch.randint(0, 5, (32,))
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 3.0])
    torch.testing.assert_close(FocalLoss(gamma=0)(logits, targets), F.cross_entropy(logits, targets))
    torch.testing.assert_close(FocalLoss(0, weights)(logits, targets), F.cross_entropy(logits, targets, weight=weights))
    # A larger gamma down-weights easy examples, so the loss shrinks.
    assert FocalLoss(gamma=4)(logits, targets) < FocalLoss(gamma=2)(logits, targets) < FocalLoss(0)(logits, targets)


def test_focal_loss_is_float32_and_finite_for_low_precision_and_confident_logits():
    logits = torch.tensor([[60.0, -60.0], [0.3, -0.2]], requires_grad=True)
    loss = FocalLoss(gamma=2)(logits.bfloat16(), torch.tensor([0, 1]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_classification_loss_factory():
    logits, targets = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert isinstance(classification_loss("focal", gamma=3), FocalLoss)
    ce = classification_loss("ce", class_weights=[1.0, 2.0, 3.0])
    torch.testing.assert_close(ce(logits, targets), F.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2, 3])))
    with pytest.raises(ValueError, match="'hinge' is not one of focal, ce"):
        classification_loss("hinge")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        FocalLoss(gamma=-1)


def test_segmentation_loss_hand_made_values():
    logits = torch.zeros(1, 1, 2, 2)  # p = 1/2 everywhere
    masks = torch.tensor([[[[1, 0], [0, 0]]]], dtype=torch.uint8)
    criterion = SegmentationLoss(alpha=0.25, gamma=2, lesions=("MA",))
    total, parts = criterion(logits, masks)
    # focal: ln2 * (1/2)^2, times alpha 0.25 on the positive and 0.75 on the three negatives, mean of 4
    focal = LN2 * 0.25 * (0.25 + 3 * 0.75) / 4
    # Dice: overlap 1/2, sum p = 2, sum m = 1 -> 1 - (2 * 0.5 + 1) / (3 + 1)
    dice = 0.5
    assert close(parts["focal_MA"], focal) and close(parts["dice_MA"], dice)
    assert close(parts["focal"], focal) and close(parts["dice"], dice) and close(total, focal + dice)
    total, _ = SegmentationLoss(0.25, 2, focal_weight=2.0, dice_weight=0.5, lesions=("MA",))(logits, masks)
    assert close(total, 2 * focal + 0.5 * dice)


def test_segmentation_loss_absent_lesion_is_finite_and_rewards_predicting_nothing():
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    criterion = SegmentationLoss(lesions=("SE",))
    _, unsure = criterion(torch.zeros(2, 1, 8, 8), masks)
    assert close(unsure["dice_SE"], 1 - 1 / (64 + 1))  # sum p = 128 * 1/2
    logits = torch.full((2, 1, 8, 8), -30.0, requires_grad=True)
    total, silent = criterion(logits, masks)
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert float(silent["dice_SE"]) < 1e-6 and float(silent["focal_SE"]) < 1e-6


def test_segmentation_loss_without_dice_on_absent_lesions():
    """dice_on_absent=False: a lesion with no pixel in the batch adds no Dice loss (no gradient from
    it), a present one the same Dice as before; the focal term is untouched."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.uint8)
    masks[1, 0, 2:4, 3:5] = 1  # MA present in the second image only; HE absent from the batch
    _, every = SegmentationLoss(lesions=("MA", "HE"))(logits, masks)
    total, present = SegmentationLoss(lesions=("MA", "HE"), dice_on_absent=False)(logits, masks)
    assert float(every["dice_HE"]) > 0.9 and float(present["dice_HE"]) == 0.0
    torch.testing.assert_close(present["dice_MA"], every["dice_MA"])
    torch.testing.assert_close(present["focal"], every["focal"])
    torch.testing.assert_close(total, present["focal"] + present["dice_MA"])
    total.backward()
    focal_only = SegmentationLoss(lesions=("HE",), dice_weight=0.0)
    expected = torch.autograd.grad(focal_only(logits[:, 1:2], masks[:, 1:2])[0], logits)[0]
    torch.testing.assert_close(logits.grad[:, 1], expected[:, 1])  # HE: the focal gradient alone


def test_segmentation_loss_per_lesion_terms_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 16, 16)
    masks = (torch.rand(2, 5, 16, 16) > 0.9).to(torch.uint8)
    _, parts = SegmentationLoss()(logits, masks)
    assert set(parts) == {"focal", "dice"} | {f"{kind}_{lesion}" for kind in ("focal", "dice")
                                              for lesion in ("MA", "HE", "EX", "SE", "OD")}
    # Each lesion's terms only see its own channel.
    _, alone = SegmentationLoss(lesions=("EX",))(logits[:, 2:3], masks[:, 2:3])
    torch.testing.assert_close(parts["dice_EX"], alone["dice_EX"])
    torch.testing.assert_close(parts["focal_EX"], alone["focal_EX"])
    _, weighted = SegmentationLoss(lesion_weights={"MA": 3.0})(logits, masks)
    torch.testing.assert_close(weighted["focal"], parts["focal"] + 2 * parts["focal_MA"])
    _, listed = SegmentationLoss(lesion_weights=[3.0, 1, 1, 1, 1])(logits, masks)
    torch.testing.assert_close(listed["dice"], weighted["dice"])
    with pytest.raises(ValueError, match="unknown lesions \\['XX'\\]"):
        SegmentationLoss(lesion_weights={"XX": 1.0})
    with pytest.raises(ValueError, match="must both be \\[B, 5, H, W\\]"):
        SegmentationLoss()(logits[:, :4], masks[:, :4])


def test_segmentation_loss_is_float32_under_autocast():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 16, 16)
    masks = (torch.rand(2, 5, 16, 16) > 0.8).to(torch.uint8)
    reference, _ = SegmentationLoss()(logits.bfloat16().float(), masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = SegmentationLoss()(logits.bfloat16(), masks)
    assert total.dtype == torch.float32 and parts["dice_MA"].dtype == torch.float32
    torch.testing.assert_close(total, reference)


def test_gate_regularisers_on_known_routings():
    uniform = torch.full((3, 4), 0.25)
    one_expert = F.one_hot(torch.zeros(3, dtype=torch.long), 4).float()
    spread_one_hot = torch.eye(4)
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert close(gate_sparsity(uniform), 1) and close(gate_sparsity(one_expert), 0)
    assert close(gate_sparsity(half), 0.5 * 4 / 3)
    assert close(gate_load_balance(uniform), 0) and close(gate_load_balance(spread_one_hot), 0)
    assert close(gate_load_balance(one_expert), 3) and close(gate_load_balance(half), 1)
    assert close(gate_entropy(uniform), math.log(4)) and close(gate_entropy(one_expert), 0)
    assert close(gate_entropy(half), LN2)
    assert close(gate_sparsity(torch.ones(5, 1)), 0)


def test_gate_regularisers_have_finite_gradients_at_saturated_softmax():
    scores = torch.tensor([[0.0, -200.0, -3.0], [5.0, 1.0, 0.0]], requires_grad=True)
    weights = torch.softmax(scores, dim=1)
    (gate_sparsity(weights) + gate_load_balance(weights) + gate_entropy(weights.bfloat16())).backward()
    assert torch.isfinite(scores.grad).all()
