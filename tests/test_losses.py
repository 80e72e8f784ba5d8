import torch
import torch.nn.functional as F

from lesionseg.losses import DiceBCELoss, ExclusiveDiceCELoss, OverlappingDiceBCELoss, soft_dice_loss


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


def test_deep_supervision_weights_halve_and_normalise():
    from lesionseg.losses import DeepSupervisionLoss, deep_supervision_weights

    w = deep_supervision_weights(3)
    assert w == [4 / 7, 2 / 7, 1 / 7]
    base = DiceBCELoss()
    target = (torch.rand(1, 1, 8, 8) > 0.5).float()
    outs = [torch.randn(1, 1, 8, 8) for _ in range(3)]
    expected = sum(wi * base(o, target) for wi, o in zip(w, outs))
    assert torch.isclose(DeepSupervisionLoss(base)(outs, target), expected)
    assert torch.isclose(DeepSupervisionLoss(base)(outs[0], target), base(outs[0], target))


def test_cbam_guards_narrow_widths_and_gates():
    from lesionseg.models.attention import CBAM, ChannelAttention

    assert ChannelAttention(8).mlp[0].out_channels == 4  # 8 // 16 would be 0
    assert ChannelAttention(128).mlp[0].out_channels == 8
    x = torch.randn(2, 8, 9, 11)
    y = CBAM(8)(x)
    assert y.shape == x.shape and (y.abs() <= x.abs() + 1e-6).all()  # sigmoid gates only scale down


def test_lovasz_hinge_equals_twice_the_jaccard_loss_at_unit_margins():
    from lesionseg.losses import lovasz_hinge
    from lesionseg.metrics import batch_jaccard_dice

    torch.manual_seed(1)
    target = (torch.rand(3, 1, 12, 12) > 0.6).float()
    pred = target.clone()
    pred[0, 0, :4] = 1 - pred[0, 0, :4]  # some wrong pixels in image 0, image 1 fully right
    pred[2] = (torch.rand(1, 12, 12) > 0.5).float()
    logits = pred * 2 - 1  # exactly ±1: hinge errors 0 (right) or 2 (wrong)
    jaccard, _ = batch_jaccard_dice(pred > 0.5, target > 0.5)
    assert torch.isclose(lovasz_hinge(logits, target), (2 * (1 - jaccard.float())).mean(), atol=1e-6)
    assert lovasz_hinge(target * 40 - 20, target) == 0  # confident and right: no loss


def test_lovasz_is_added_with_its_weight_and_has_gradients():
    from lesionseg.losses import lovasz_hinge

    torch.manual_seed(2)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    base = DiceBCELoss()(logits, target)
    both = DiceBCELoss(lovasz_weight=0.5)(logits, target)
    assert torch.isclose(both, base + 0.5 * lovasz_hinge(logits, target))
    both.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_batch_dice_is_the_dice_of_the_batch_as_one_image():
    """Per structure over the batch: the images side by side as one image, per-image Dice of that."""
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.7).float()
    side_by_side = lambda t: torch.cat(list(t), dim=-1)[None]  # noqa: E731 (N, 1, H, W) → (1, 1, H, N·W)
    assert torch.isclose(soft_dice_loss(logits, target, batch=True),
                         soft_dice_loss(side_by_side(logits), side_by_side(target)))
    classes = torch.randint(0, 4, (3, 8, 8))
    onehot = F.one_hot(classes, 4).permute(0, 3, 1, 2)[:, 1:].float()
    multi = torch.randn(3, 4, 8, 8)
    for loss, logits in ((ExclusiveDiceCELoss, multi), (OverlappingDiceBCELoss, multi[:, 1:])):
        joined = loss(dice_weight=1.0, batch_dice=True)(logits, onehot)
        alone = loss(dice_weight=1.0)(side_by_side(logits), side_by_side(onehot))
        assert torch.isclose(joined, alone, atol=1e-6)


def test_batch_dice_spares_an_image_without_the_structure_its_own_penalty():
    """A little probability on a structure absent from one image: per image that image's Dice term is
    nearly 1; over the batch it only dilutes the other image's Dice a little."""
    target = torch.zeros(2, 1, 16, 16)
    target[0, :, 4:12, 4:12] = 1
    logits = (target * 2 - 1) * 8
    logits[1, :, :2, :2] = 2.0  # four faint false pixels in the image without the structure
    per_image, over_batch = soft_dice_loss(logits, target), soft_dice_loss(logits, target, batch=True)
    assert per_image > 0.35 and over_batch < 0.05  # 0.39 (0.78 for the image without it) against 0.03
