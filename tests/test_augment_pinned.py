"""Augmented batches pinned: for a fixed seed the augmenters must keep producing exactly these
batches (sha256 of the output bytes) and advance their generator by exactly these counts.

The digests were computed by the code before the CPU backends got their own RandomAffine path
(warping only the picked images), so any change to what an augmentation computes, or to how many
random numbers it draws, fails here. Six consecutive batches from one generator per case.

ElasticDistortion is pinned by each image's sum and position-weighted sum instead (to 1e-6 of
each), with the counter exact: it smooths its random field with two matrix products, whose last
bits depend on the BLAS kernels (OpenBLAS's SkylakeX kernels on an AVX-512 CPU gave other bits
than its Haswell ones: outputs up to 1.7e-6 apart, sums 2e-8 apart relatively), and CI runs on
CPUs of both kinds."""
import hashlib

import numpy as np
import pytest

from xpnet.augment import ElasticDistortion, KerasAffine, RandomAffine

M8 = dict(rotation=25.0, scale=None, zoom=0.2, shift=(0.2, 0.2))  # seed 001's affine() recipe
CASES = {
    "m8": (lambda: RandomAffine(**M8, probability=0.25), (16, 1, 28, 28), "float32"),
    "m12": (lambda: RandomAffine(**M8, probability=0.8), (16, 1, 28, 28), "float32"),
    "default": (lambda: RandomAffine(fill=0.5), (5, 2, 9, 11), "float32"),
    "all64": (lambda: RandomAffine(scale=(0.1, 0.3), probability=1.0, fill=-1.0), (7, 1, 12, 10),
              "float64"),
    "rare": (lambda: RandomAffine(probability=0.05), (4, 1, 8, 8), "float32"),  # 5 batches: none picked
    "keras": (lambda: KerasAffine(probability=0.6), (16, 1, 28, 28), "float32"),
    "keras1": (lambda: KerasAffine(fill_mode="constant", fill=0.25), (6, 3, 10, 9), "float32"),
}
PINNED = {
    "m8": [('930649162805bb27', 112), ('8a65ab6f2d55e905', 224), ('f8e5ca82e7854dbf', 336),
           ('a400a08c7e0cfe63', 448), ('9e79e18178ca809e', 560), ('ff8ad0fd005a6135', 672)],
    "m12": [('5c93f6c02be2092b', 112), ('77847833a8604615', 224), ('8a7f973cdbcb6edb', 336),
            ('f6d2cebb09450558', 448), ('298e97aa2387fe42', 560), ('d5353236e23f4674', 672)],
    "default": [('343f45cede6a8a08', 35), ('f73053023d5cb393', 70), ('69425202b045d5c3', 105),
                ('14aabd96207c00a3', 140), ('30a96cbd59bba80d', 175), ('d90fdcdb5a6cbee0', 210)],
    "all64": [('006a7cff39f70037', 49), ('e77b7d2435d0a9a3', 98), ('86c1379478a9771f', 147),
              ('6bfc4797b12f4256', 196), ('5b7462563535fbe4', 245), ('5f9fbc3d16f3a2c3', 294)],
    "rare": [('0dc7ea57494a65dc', 28), ('e0b1a9d1df326a47', 56), ('4a8c6fb8603220ea', 84),
             ('ca78814f51d1751b', 112), ('1ae376e790a0fed1', 140), ('7845b457eadfb6b1', 168)],
    "keras": [('e95711b2440c728c', 96), ('41c4025994c1991b', 192), ('37416c12813dadfb', 288),
              ('71e42afab62a6e74', 384), ('0f78e3db31b72d7c', 480), ('6eee57e055f07904', 576)],
    "keras1": [('37c8271b98cd4823', 30), ('af54c12f1c58ac13', 60), ('2eebcb077bbe95bf', 90),
               ('9152db9f42197813', 120), ('18ceb93205a64832', 150), ('00e740dd0a919e6c', 180)],
}
# ElasticDistortion: per batch, each image's (sum, sum weighted by 1 + its flat pixel index), and
# the generator's counter after it (computed with OpenBLAS's Haswell kernels, whose bytes matched
# the sha256 pins this case had until 2026-12-02)
ELASTIC = [
    [(365.543972, 134436.494), (370.885011, 143567.094), (391.936000, 154132.572),
     (392.296000, 154358.208), (357.449043, 136979.545), (365.709835, 142267.611),
     (391.368000, 153609.436), (360.985825, 142857.149)],
    [(353.636113, 137726.209), (369.097343, 149740.851), (373.053870, 146434.457),
     (351.679450, 135353.366), (387.231088, 152681.328), (376.179107, 147813.352),
     (356.392387, 134145.974), (368.928024, 148941.668)],
    [(374.927698, 150204.322), (391.892000, 154066.608), (392.252000, 154258.108),
     (390.109324, 152833.047), (391.968000, 153926.260), (360.761970, 148403.304),
     (391.684000, 153172.732), (364.762705, 149948.269)],
    [(392.192000, 153629.648), (375.232591, 146084.107), (391.908000, 153973.492),
     (371.944993, 142102.445), (382.435594, 151899.266), (376.382050, 150924.088),
     (363.234919, 148935.404), (375.748459, 147487.441)],
    [(392.852000, 154434.372), (392.208000, 154590.732), (365.694441, 141178.559),
     (391.924000, 154189.608), (363.791273, 143803.936), (391.640000, 153366.804),
     (392.000000, 153382.604), (361.453167, 143633.712)],
    [(382.835557, 150724.030), (391.864000, 154111.340), (392.224000, 154286.776),
     (391.580000, 153964.228), (385.037552, 150724.091), (371.734363, 143051.339),
     (371.128126, 147934.378), (361.682376, 147111.027)],
]
ELASTIC_COUNTERS = [6280, 12560, 18840, 25120, 31400, 37680]


def images(shape, dtype, b):
    """Batch ``b`` of a case: deterministic values in [0, 1] (no generator involved)."""
    size = int(np.prod(shape))
    return (((np.arange(size) * 7919 + b * 104729) % 251) / 250.0).reshape(shape).astype(dtype)


@pytest.mark.parametrize("name", sorted(CASES))
def test_augmented_batches_stay_as_pinned(backend, name):
    make, shape, dtype = CASES[name]
    aug, rng = make(), backend.rng(2026, 11)
    got = []
    for b in range(6):
        host = images(shape, dtype, b)
        out = aug(backend.asarray(host), rng)
        assert out.shape == shape and out.dtype == np.dtype(dtype)
        out = np.ascontiguousarray(backend.to_numpy(out))
        got.append((hashlib.sha256(out.tobytes()).hexdigest()[:16], rng.counter))
    assert got == PINNED[name]


def test_elastic_batches_stay_as_pinned(backend):
    """ElasticDistortion's batches to 1e-6 of their pinned sums (see the module doc)."""
    aug, rng = ElasticDistortion(probability=0.5), backend.rng(2026, 11)
    weights = np.arange(1, 28 * 28 + 1, dtype=np.float64).reshape(28, 28)
    for b in range(6):
        out = aug(backend.asarray(images((8, 1, 28, 28), "float32", b)), rng)
        assert out.shape == (8, 1, 28, 28) and out.dtype == np.float32
        out = backend.to_numpy(out).astype(np.float64)[:, 0]
        got = np.stack([out.sum(axis=(1, 2)), (out * weights).sum(axis=(1, 2))], axis=1)
        np.testing.assert_allclose(got, ELASTIC[b], rtol=1e-6, atol=0, err_msg=f"batch {b}")
        assert rng.counter == ELASTIC_COUNTERS[b], b
