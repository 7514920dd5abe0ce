"""ScatterNet features: filter properties, shapes, stability to small shifts, and argument errors."""

import numpy as np
import pytest
import scipy.fft

from tfppml.dp import scatternet as sn


def test_filter_bank_wavelets_have_zero_mean_and_lowpass_unit_mean():
    psi, phi = sn.morlet_filter_bank(44, 2, 8)
    assert psi.shape == (2, 8, 44, 44) and phi.shape == (44, 44)
    np.testing.assert_allclose(np.abs(psi[:, :, 0, 0]), 0, atol=1e-12)
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-9)
    # Each wavelet is a band-pass whose peak sits near its centre frequency 3*pi/4 / 2**j (finer j=0 peaks higher).
    peak = [np.max(np.abs(psi[j, 0])) for j in range(2)]
    assert all(0.5 < p < 2.0 for p in peak)
    radius = []
    for j in range(2):
        k = np.unravel_index(np.argmax(np.abs(psi[j, 0])), (44, 44))
        f = [(v if v < 22 else v - 44) * 2 * np.pi / 44 for v in k]
        radius.append(np.hypot(*f))
    assert radius[0] == pytest.approx(3 * np.pi / 4, rel=0.2)
    assert radius[1] == pytest.approx(3 * np.pi / 8, rel=0.2)


def test_subsampled_lowpass_equals_the_direct_computation():
    _, phi = sn.morlet_filter_bank(44, 2, 8)
    spectrum = scipy.fft.fft2(np.random.default_rng(0).random((3, 44, 44)))
    direct = np.fft.ifft2(spectrum * phi).real[:, ::4, ::4]
    np.testing.assert_allclose(sn._lowpass_subsample(spectrum, phi, 4), direct, atol=1e-12)


def test_shapes_channels_and_non_negative_higher_orders():
    images = np.random.default_rng(1).random((5, 28, 28)).astype(np.float32)
    out = sn.scattering2d(images)
    assert out.shape == (5, 81, 7, 7) and out.dtype == np.float32
    assert sn.num_channels(2, 8) == 81 and sn.num_channels(3, 4) == 1 + 12 + 48
    assert np.all(out[:, 1:] > -1e-5)  # moduli smoothed by a positive low-pass
    np.testing.assert_allclose(sn.scattering2d(images[..., None]), out)  # (n, H, W, 1) accepted
    assert sn.scattering2d(np.zeros((1, 16, 16)), J=3, L=4).shape == (1, sn.num_channels(3, 4), 2, 2)


def test_constant_image_has_only_an_order_zero_term():
    out = sn.scattering2d(np.full((1, 28, 28), 0.7))
    np.testing.assert_allclose(out[0, 0], 0.7, rtol=1e-4)
    np.testing.assert_allclose(out[0, 1:], 0, atol=1e-4)


def test_stable_to_a_one_pixel_shift_unlike_the_pixels():
    rng = np.random.default_rng(2)
    images = np.zeros((8, 28, 28), np.float32)
    images[:, 8:20, 10:18] = rng.random((8, 12, 8))  # objects away from the border, as in the datasets
    shifted = np.roll(images, 1, axis=2)
    a, b = sn.scattering2d(images), sn.scattering2d(shifted)
    feature_change = np.linalg.norm(a - b) / np.linalg.norm(a)
    pixel_change = np.linalg.norm(images - shifted) / np.linalg.norm(images)
    assert feature_change < 0.5 * pixel_change


def test_linear_in_scale_for_order_zero_and_positively_homogeneous_overall():
    images = np.random.default_rng(3).random((2, 28, 28))
    np.testing.assert_allclose(sn.scattering2d(3 * images), 3 * sn.scattering2d(images), rtol=1e-4, atol=1e-5)


def test_group_normalize_per_example():
    feats = np.random.default_rng(4).normal(3, 2, (4, 6, 7, 7)).astype(np.float32)
    out = sn.group_normalize(feats, groups=3)
    grouped = out.reshape(4, 3, -1)
    np.testing.assert_allclose(grouped.mean(axis=2), 0, atol=1e-5)
    np.testing.assert_allclose(grouped.std(axis=2), 1, atol=1e-3)
    # An example's normalisation does not depend on the others (no privacy cost).
    np.testing.assert_allclose(sn.group_normalize(feats[:1], groups=3), out[:1], atol=1e-6)


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: sn.scattering2d(np.zeros((2, 28))), ValueError, ["`images`", "(n, H, W)"]),
        (lambda: sn.scattering2d(np.zeros((2, 30, 30))), ValueError, ["`images`", "divisible by 2**J = 4"]),
        (lambda: sn.scattering2d(np.zeros((2, 28, 32))), ValueError, ["`images`", "square"]),
        (lambda: sn.scattering2d(np.full((1, 8, 8), np.nan)), ValueError, ["`images`", "NaN"]),
        (lambda: sn.scattering2d(np.zeros((1, 8, 8), np.complex64)), TypeError, ["`images`", "real"]),
        (lambda: sn.scattering2d(np.zeros((1, 8, 8)), J=0), ValueError, ["`J`", "[1, 4]"]),
        (lambda: sn.scattering2d(np.zeros((1, 8, 8)), L=2.0), TypeError, ["`L`", "int"]),
        (lambda: sn.group_normalize(np.zeros((1, 6, 2, 2)), groups=4), ValueError, ["`groups`", "divisor"]),
        (lambda: sn.group_normalize(np.zeros((6, 2, 2)), groups=3), ValueError, ["`features`"]),
    ],
)
def test_bad_arguments(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
