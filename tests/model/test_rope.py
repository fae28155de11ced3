import math

import torch

from model.config import get_preset
from model.rope import RotaryEmbedding, apply_rope, rope_frequencies


def test_linear_scaling_divides_positions():
    base = RotaryEmbedding(get_preset("tiny"))
    scaled = RotaryEmbedding(get_preset("tiny", rope_scaling="linear", rope_factor=4.0))
    pos = torch.arange(0, 64, 4)[None]
    cos_s, sin_s = scaled(pos)
    cos_b, sin_b = base(pos // 4)
    torch.testing.assert_close(cos_s, cos_b)
    torch.testing.assert_close(sin_s, sin_b)


def test_ntk_keeps_highest_frequency_and_stretches_lowest():
    cfg = get_preset("tiny")
    plain, _ = rope_frequencies(cfg)
    ntk, _ = rope_frequencies(cfg.replace(rope_scaling="ntk", rope_factor=8.0))
    assert ntk[0] == plain[0]
    assert math.isclose(float(plain[-1] / ntk[-1]), 8.0, rel_tol=1e-4)


def test_yarn_interpolates_low_frequencies_only_and_scales_attention():
    cfg = get_preset("small", rope_scaling="yarn", rope_factor=4.0, max_seq_len=16384)
    plain, _ = rope_frequencies(get_preset("small"))
    yarn, scale = rope_frequencies(cfg)
    torch.testing.assert_close(yarn[:2], plain[:2])  # fast dims untouched
    torch.testing.assert_close(yarn[-1], plain[-1] / 4)  # slow dims interpolated
    assert math.isclose(scale, 0.1 * math.log(4.0) + 1.0)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(get_preset("tiny"))
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        cq, sq = rope(torch.tensor([[i]]))
        ck, sk = rope(torch.tensor([[j]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(10, 3), score(107, 100))
