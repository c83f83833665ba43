"""Sliding-window inference: stitching, blending, padding, batching of windows and flip TTA."""
import pytest
import torch
import torch.nn.functional as F

from codebase.evaluation.sliding_window import flip_averaged, predict_sliding_window


def pointwise_model(generator):
    """A per-pixel two-layer network (1x1 convolutions): 3 -> 5 channels, no spatial context."""
    first, second = torch.randn(8, 3, 1, 1, generator=generator), torch.randn(5, 8, 1, 1, generator=generator)
    return lambda x: F.conv2d(torch.tanh(F.conv2d(x, first)), second)


def conv_model(weight):
    """A fixed convolution with zero padding (translation-equivariant, receptive field 2r+1)."""
    return lambda x: F.conv2d(x, weight, padding=weight.shape[-1] // 2)


def test_image_of_one_window_equals_a_single_forward():
    generator = torch.Generator().manual_seed(0)
    model = conv_model(torch.randn(4, 3, 5, 5, generator=generator))
    image = torch.randn(2, 3, 40, 56, generator=generator)
    for blend in ("gaussian", "constant"):
        out = predict_sliding_window(model, image, (40, 56), blend=blend)
        torch.testing.assert_close(out, torch.sigmoid(model(image)))
    raw = predict_sliding_window(model, image[0], (40, 56), activation=None)  # [C, H, W] in, [C, H, W] out
    torch.testing.assert_close(raw, model(image[:1])[0])


@pytest.mark.parametrize("shape, window, overlap", [((70, 95), (32, 32), 0.25), ((64, 64), (32, 48), 0.5),
                                                    ((20, 30), (32, 32), 0.25)])  # the last: padded
def test_pointwise_model_is_stitched_exactly(shape, window, overlap):
    generator = torch.Generator().manual_seed(1)
    model = pointwise_model(generator)
    image = torch.randn(2, 3, *shape, generator=generator)
    for blend in ("gaussian", "constant"):
        out = predict_sliding_window(model, image, window, overlap=overlap, blend=blend, windows_per_batch=3)
        assert out.shape == (2, 5, *shape)
        torch.testing.assert_close(out, torch.sigmoid(model(image)))


def test_gaussian_blend_is_continuous_across_window_borders():
    """A 3x3 convolution differs from the whole-image forward only on each window's one-pixel rim.
    Constant weights leave seams there; Gaussian weights make the rim negligible away from the image
    border (near the border every window's weight is MONAI's floor, so blending is constant there)."""
    generator = torch.Generator().manual_seed(2)
    model = conv_model(torch.randn(2, 3, 3, 3, generator=generator))
    image = torch.randn(1, 3, 96, 128, generator=generator)
    whole = model(image)
    gaussian = predict_sliding_window(model, image, (32, 32), overlap=0.5, blend="gaussian", activation=None)
    constant = predict_sliding_window(model, image, (32, 32), overlap=0.5, blend="constant", activation=None)
    rows, columns = torch.arange(96).view(-1, 1) % 16, torch.arange(128).view(1, -1) % 16
    seams = (rows == 0) | (rows == 15) | (columns == 0) | (columns == 15)  # windows start every 16 px
    constant_error = (constant - whole).abs()
    assert constant_error[..., ~seams].max() < 1e-5  # stitching itself is exact
    assert constant_error.max() > 0.1 * whole.abs().max()  # and the seams are visible
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # a quarter window from the border
    assert (gaussian - whole).abs()[interior].max() < 0.02 * constant_error[interior].max()


def test_windows_per_batch_bounds_the_forward_and_does_not_change_the_output():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 3, 3, 3, generator=generator)
    seen = []

    def model(x):
        seen.append(x.shape[0])
        return F.conv2d(x, weight, padding=1)

    image = torch.randn(2, 3, 80, 100, generator=generator)
    outputs = {}
    for per_batch in (1, 3, 1000):
        seen.clear()
        outputs[per_batch] = predict_sliding_window(model, image, (32, 32), windows_per_batch=per_batch,
                                                    flip_tta=True)
        assert max(seen) <= per_batch
    torch.testing.assert_close(outputs[1], outputs[3])
    torch.testing.assert_close(outputs[1], outputs[1000])


def test_flip_tta_of_a_flip_symmetric_model_is_unchanged():
    generator = torch.Generator().manual_seed(4)
    kernel = torch.randn(2, 3, 3, 3, generator=generator)
    symmetric = conv_model(kernel + kernel.flip(-1) + kernel.flip(-2) + kernel.flip(-1, -2))  # commutes with flips
    image = torch.randn(1, 3, 48, 64, generator=generator)
    plain = predict_sliding_window(symmetric, image, (32, 32))
    torch.testing.assert_close(predict_sliding_window(symmetric, image, (32, 32), flip_tta=True), plain)
    torch.testing.assert_close(predict_sliding_window(symmetric, image, (32, 32), flip_tta=True,
                                                      vertical_flip=True), plain)


def test_flip_tta_averages_probabilities():
    generator = torch.Generator().manual_seed(5)
    model = conv_model(torch.randn(2, 3, 3, 3, generator=generator))  # not flip-symmetric
    image = torch.randn(1, 3, 32, 32, generator=generator)
    identity = torch.sigmoid(model(image))
    horizontal = torch.sigmoid(model(image.flip(-1))).flip(-1)
    vertical = torch.sigmoid(model(image.flip(-2))).flip(-2)
    out = predict_sliding_window(model, image, (32, 32), flip_tta=True)
    assert not torch.allclose(out, identity)
    torch.testing.assert_close(out, (identity + horizontal) / 2)
    both = predict_sliding_window(model, image, (32, 32), flip_tta=True, vertical_flip=True)
    torch.testing.assert_close(both, (identity + horizontal + vertical) / 3)
    torch.testing.assert_close(flip_averaged(lambda x: torch.sigmoid(model(x)))(image), (identity + horizontal) / 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": (0, 32)}, "window=.*positive"), ({"window": 32}, "window=32: expected"),
    ({"overlap": 1.0}, "overlap=1.0"), ({"windows_per_batch": 0}, "windows_per_batch=0"),
    ({"blend": "linear"}, "blend='linear'"),
])
def test_bad_settings_are_named(kwargs, message):
    arguments = {"window": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=message):
        predict_sliding_window(lambda x: x, torch.zeros(1, 3, 40, 40), **arguments)
    with pytest.raises(ValueError, match="expected \\[B, C, H, W\\]"):
        predict_sliding_window(lambda x: x, torch.zeros(40, 40), (32, 32))
