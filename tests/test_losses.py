import torch
import torch.nn.functional as F

from lesionseg.losses import DiceBCELoss, soft_dice_loss


def test_soft_dice_hand_computed():
    logits = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])  # sigmoid = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # inter = 0.5, denom = 2 + 1 = 3 → dice = (1 + 1) / (3 + 1) = 0.5
    assert torch.isclose(soft_dice_loss(logits, target), torch.tensor(0.5))


def test_dice_bce_combines_weights():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    loss = DiceBCELoss(dice_weight=0.3, bce_weight=2.0)(logits, target)
    expected = 2.0 * F.binary_cross_entropy_with_logits(logits, target) + 0.3 * soft_dice_loss(logits, target)
    assert torch.isclose(loss, expected)


def test_confident_correct_prediction_has_small_loss():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    good = (target * 2 - 1) * 20
    assert DiceBCELoss()(good, target) < 1e-3
    assert DiceBCELoss()(-good, target) > 1.5


def test_bf16_logits_are_summed_in_fp32():
    target = torch.ones(1, 1, 512, 512)
    logits = torch.full((1, 1, 512, 512), 10.0, dtype=torch.bfloat16)
    # In bf16 a running sum of 262144 ones stalls at 256; fp32 gets the Dice right (~0).
    loss = soft_dice_loss(logits, target)
    assert loss.dtype == torch.float32 and loss < 1e-3
