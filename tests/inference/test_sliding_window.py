import math

import numpy as np
import pytest
import torch

from nnscreener.errors import ScreenerError
from nnscreener.inference.sliding_window import Stitcher, batched, blending_weights, iter_windows, pad_to_patch


@pytest.mark.parametrize("shape, patch", [((37, 53, 61), (8, 12, 10)), ((8, 12, 10), (8, 12, 10)),
                                          ((9, 40, 11), (8, 12, 10))])
@pytest.mark.parametrize("step", [0.25, 0.5, 0.75, 1.0])
def test_windows_cover_every_voxel_with_strides_at_most_step_times_patch(shape, patch, step):
    windows = list(iter_windows(shape, patch, step))
    coverage = np.zeros(shape, dtype=int)
    for w in windows:
        assert [s.stop - s.start for s in w] == list(patch)
        assert all(0 <= s.start and s.stop <= n for s, n in zip(w, shape))
        coverage[w] += 1
    assert coverage.min() >= 1
    for axis in range(3):
        starts = sorted({w[axis].start for w in windows})
        assert starts[0] == 0 and starts[-1] == shape[axis] - patch[axis]
        assert all(b - a <= math.ceil(step * patch[axis]) for a, b in zip(starts, starts[1:]))
    # z outermost, x innermost, no repeats
    keys = [tuple(s.start for s in w) for w in windows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_iter_windows_rejects_bad_step_and_too_small_volume():
    with pytest.raises(ScreenerError, match="step size"):
        list(iter_windows((10, 10, 10), (4, 4, 4), 0.0))
    with pytest.raises(ScreenerError, match="step size"):
        list(iter_windows((10, 10, 10), (4, 4, 4), 1.5))
    with pytest.raises(ValueError, match="smaller than the patch"):
        list(iter_windows((3, 10, 10), (4, 4, 4), 0.5))


@pytest.mark.parametrize("as_tensor", [True, False])
def test_pad_to_patch_centres_content_and_crop_undoes_it(as_tensor):
    data = np.arange(1 * 3 * 10 * 5, dtype=np.float32).reshape(1, 3, 10, 5) + 1
    padded = pad_to_patch(torch.from_numpy(data) if as_tensor else data, (8, 4, 6))
    out = np.asarray(padded.data)
    assert out.shape == (1, 8, 10, 6)  # y already larger than the patch: left alone
    assert padded.offset_zyx == (2, 0, 0)  # (8 - 3) // 2 before, the odd voxel after
    np.testing.assert_array_equal(out[(0, *padded.crop)], data[0])
    assert out.sum() == data.sum()  # padding is zeros


def test_uniform_and_gaussian_blending_of_two_overlapping_windows_by_hand():
    # volume (1, 1, 6), patch (1, 1, 4); window A covers x 0..3, window B covers x 2..5
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])
    windows = [(slice(0, 1), slice(0, 1), slice(0, 4)), (slice(0, 1), slice(0, 1), slice(2, 6))]
    values = torch.stack([a, b]).reshape(2, 1, 1, 1, 4)

    uniform = Stitcher((1, 1, 6), (1, 1, 4), "uniform", "cpu")
    uniform.add(values, windows)
    np.testing.assert_allclose(uniform.result()[0, 0].numpy(), [1, 2, (3 + 10) / 2, (4 + 20) / 2, 30, 40])

    # nnU-Net's Gaussian: sigma = 4 / 8 = 0.5 voxel along x, centred on local index 2, peak 1, so the weights of
    # local indices 0..3 are exp(-d^2 / (2 * 0.5^2)) = exp(-2 d^2) for d = 2, 1, 0, 1
    w = [math.exp(-8), math.exp(-2), 1.0, math.exp(-2)]
    expected = [1, 2, (w[2] * 3 + w[0] * 10) / (w[2] + w[0]), (w[3] * 4 + w[1] * 20) / (w[3] + w[1]), 30, 40]
    np.testing.assert_allclose(blending_weights((1, 1, 4), "gaussian", "cpu")[0, 0].numpy(), w, rtol=1e-5)
    gaussian = Stitcher((1, 1, 6), (1, 1, 4), "gaussian", "cpu")
    gaussian.add(values[:1], windows[:1])  # one window at a time gives the same blend as a batch
    gaussian.add(values[1:], windows[1:])
    np.testing.assert_allclose(gaussian.result()[0, 0].numpy(), expected, rtol=1e-6)


def test_stitcher_accumulates_in_float32_from_half_inputs():
    stitcher = Stitcher((2, 2, 2), (2, 2, 2), "uniform", "cpu")
    window = [(slice(0, 2),) * 3]
    for _ in range(3):  # 60000 + 60000 overflows float16 (max 65504); the float32 accumulator must not
        stitcher.add(torch.full((1, 1, 2, 2, 2), 60000.0, dtype=torch.float16), window)
    result = stitcher.result()
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, torch.full((2, 2, 2), 60000.0))


def test_stitcher_rejects_mismatched_values_and_windows():
    stitcher = Stitcher((4, 4, 4), (2, 2, 2), "uniform", "cpu")
    with pytest.raises(ValueError, match="expected values of shape"):
        stitcher.add(torch.zeros(1, 1, 2, 2, 3), [(slice(0, 2),) * 3])
    with pytest.raises(ValueError, match="2 patch maps but 1 windows"):
        stitcher.add(torch.zeros(2, 1, 2, 2, 2), [(slice(0, 2),) * 3])
    with pytest.raises(ScreenerError, match="blending"):
        Stitcher((4, 4, 4), (2, 2, 2), "median", "cpu")
    with pytest.raises(RuntimeError, match="did not cover"):
        stitcher.add(torch.zeros(1, 1, 2, 2, 2), [(slice(0, 2),) * 3])
        stitcher.result()


def test_batched_keeps_order_and_a_short_last_batch():
    assert list(batched(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ScreenerError, match="at least 1"):
        list(batched(iter(range(3)), 0))
