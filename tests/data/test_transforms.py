"""Train and eval presets: masks follow every geometric step, photometric steps leave them alone."""

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from codebase.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GaussianBlur3,
    MasksAsBits,
    RandomHueShift,
    eval_transforms,
    to_tv_tensors,
    train_transforms,
)


def square_sample(height=64, width=96):
    """A black image with a white square, and a 5-lesion mask with the same square in channel 2."""
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((5, height, width), np.uint8)
    image[10:26, 12:36] = 255
    masks[2, 10:26, 12:36] = 1
    return image, masks


def test_masks_follow_flips_and_affine():
    image, masks = square_sample()
    transform = train_transforms()
    flipped_h = flipped_v = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out = transform(to_tv_tensors(image, masks))
        picture, mask = out["image"], out["masks"]
        assert mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
        assert mask[[0, 1, 3, 4]].sum() == 0
        grey = picture.mean(0)
        bright = grey > (grey.max() + grey.min()) / 2  # where the square went in the image
        square = mask[2].bool()
        iou = (bright & square).sum() / (bright | square).sum()
        assert iou > 0.75, (seed, float(iou))
        ys, xs = torch.nonzero(square, as_tuple=True)
        flipped_h += xs.float().mean() > 48
        flipped_v += ys.float().mean() > 32
    assert 5 < flipped_h < 25 and 5 < flipped_v < 25  # both flips happen, each about half the time


def test_affine_moves_masks_with_the_image():
    image, masks = square_sample()
    transform = train_transforms()
    moved = 0
    for seed in range(20):
        torch.manual_seed(seed)
        mask = transform(to_tv_tensors(image, masks))["masks"][2]
        flips = [mask, mask.flip(-1), mask.flip(-2), mask.flip(-1).flip(-2)]
        moved += min(int((m != torch.from_numpy(masks[2])).sum()) for m in flips) > 0
    assert moved >= 5  # the affine (applied half the time) changes the mask beyond flips


def test_hue_shift_keeps_grey_and_masks():
    image = torch.rand(3, 8, 10)
    image[:, :2] = 0.5  # a grey band
    masks = tv_tensors.Mask(torch.ones(5, 8, 10, dtype=torch.uint8))
    torch.manual_seed(0)
    out = RandomHueShift(0.1)({"image": tv_tensors.Image(image), "masks": masks})
    assert isinstance(out["image"], tv_tensors.Image) and out["masks"] is masks
    torch.testing.assert_close(out["image"][:, :2], image[:, :2])
    assert not torch.allclose(out["image"][:, 2:], image[:, 2:])
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    torch.testing.assert_close(out["image"].sum(0), image.sum(0).clamp(max=3), atol=0.05, rtol=0)  # keeps brightness


def test_eval_preset_only_normalises():
    image, masks = square_sample()
    out = eval_transforms()(to_tv_tensors(image, masks))
    assert torch.equal(out["masks"].as_subclass(torch.Tensor), torch.from_numpy(masks))
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out["image"][:, 15, 20], white)


def test_blur_equals_torchvisions_gaussian_blur():
    image = tv_tensors.Image(torch.rand(3, 20, 30))
    for seed in range(3):
        torch.manual_seed(seed)
        ours = GaussianBlur3(sigma=(0.1, 1.0))(image)
        torch.manual_seed(seed)
        theirs = v2.GaussianBlur(kernel_size=3, sigma=(0.1, 1.0))(image)
        assert isinstance(ours, tv_tensors.Image)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    masks = tv_tensors.Mask(torch.ones(5, 20, 30, dtype=torch.uint8))
    assert GaussianBlur3()({"image": image, "masks": masks})["masks"] is masks


def test_masks_carried_as_bits_come_out_as_each_mask_transformed_alone():
    """The train preset moves the five masks as bits of one channel; the result must equal the same
    steps (same random draws) applied to the five masks themselves."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    masks = (rng.random((5, 48, 64)) > 0.7).astype(np.uint8)
    packed = train_transforms(crop_size=(40, 56))
    plain = v2.Compose(list(packed.transforms))
    assert isinstance(packed, MasksAsBits) and type(plain) is v2.Compose
    for seed in range(12):
        torch.manual_seed(seed)
        ours = packed(to_tv_tensors(image, masks))
        torch.manual_seed(seed)
        theirs = plain(to_tv_tensors(image, masks))
        assert ours["masks"].dtype == torch.uint8 and ours["masks"].shape == (5, 40, 56)
        assert torch.equal(ours["masks"], theirs["masks"]), seed
        assert torch.equal(ours["image"], theirs["image"]), seed
