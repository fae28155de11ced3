import math

import pytest
import torch

from model.encoders import Media, MediaError, audio_features, mel_filterbank, placeholder_count
from model.tokenizer import MediaPart
from model.transformer import Transformer, next_token_loss


def test_placeholder_counts_follow_the_config(tiny_cfg):
    p = tiny_cfg.image_patch_size
    assert placeholder_count("image", torch.rand(3, 4 * p, 2 * p), tiny_cfg) == 8
    assert placeholder_count("video", torch.rand(5, 3, 4 * p, 4 * p), tiny_cfg) == 4  # 16 / 2x2
    one_second = audio_features(torch.randn(tiny_cfg.audio_sample_rate), tiny_cfg)
    assert one_second.shape == (1 + tiny_cfg.audio_sample_rate // tiny_cfg.audio_hop,
                                tiny_cfg.audio_n_mels)
    expected = one_second.shape[0] // tiny_cfg.audio_frames_per_token
    assert placeholder_count("audio", one_second, tiny_cfg) == expected
    assert placeholder_count("image", torch.zeros(3, p, p, dtype=torch.uint8), tiny_cfg) == 1


@pytest.mark.parametrize("kind, data, message", [
    ("image", torch.rand(3, 10, 8), "not a multiple of the patch size"),
    ("image", torch.randint(0, 255, (3, 8, 8)), "uint8 or float tensor"),
    ("image", torch.rand(8, 8), "uint8 or float tensor"),
    ("audio", torch.randn(16000), "log-mel frames"),
    ("audio", torch.randn(2, 32), "shorter than one token"),
    ("video", torch.rand(2, 3, 4, 12), "not divisible by video_pool"),
    ("smell", torch.rand(3), "unknown modality"),
])
def test_bad_media_is_refused_with_the_reason(tiny_cfg, kind, data, message):
    with pytest.raises(MediaError, match=message):
        placeholder_count(kind, data, tiny_cfg)


def test_log_mel_sees_where_a_tone_is(tiny_cfg):
    sr = tiny_cfg.audio_sample_rate
    t = torch.arange(sr) / sr
    low = audio_features(torch.sin(2 * math.pi * 300 * t), tiny_cfg)
    high = audio_features(torch.sin(2 * math.pi * 5000 * t), tiny_cfg)
    assert low.shape == (1 + sr // tiny_cfg.audio_hop, tiny_cfg.audio_n_mels)
    assert low.mean(0).argmax() < high.mean(0).argmax()
    fb = mel_filterbank(tiny_cfg.audio_n_mels, tiny_cfg.audio_n_fft, sr)
    assert (fb.sum(0) > 0).all()  # no empty filter
    with pytest.raises(MediaError, match="too short"):
        audio_features(torch.randn(50), tiny_cfg)


def test_mismatch_between_placeholders_and_media_is_a_clear_error(tiny_cfg, tokenizer):
    model = Transformer(tiny_cfg)
    ids, media = tokenizer.encode_interleaved(["a picture", MediaPart("image", torch.rand(3, 8, 8))],
                                              tiny_cfg)
    ids_t = torch.tensor([ids])
    model(ids_t, media)  # matches
    with pytest.raises(MediaError, match=r"4 <\|image\|> placeholder tokens .* 2 image"):
        model(ids_t, Media(images=[torch.rand(3, 8, 8)] * 2))
    with pytest.raises(MediaError, match=r"4 <\|image\|> placeholder tokens .* 0 image"):
        model(ids_t)


def test_media_change_the_output_and_gradients_reach_every_encoder(tiny_cfg, tokenizer):
    model = Transformer(tiny_cfg)
    parts = ["see", MediaPart("image", torch.rand(3, 8, 16)),
             "hear", MediaPart("audio", audio_features(torch.randn(2000), tiny_cfg)),
             "watch", MediaPart("video", torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8), fps=2.0),
             "done"]
    ids, media = tokenizer.encode_interleaved(parts, tiny_cfg)
    assert "0.5s" in tokenizer.decode(ids)  # video frames carry text timestamps
    ids_t = torch.tensor([ids])
    out = model(ids_t, media)
    next_token_loss(out.logits[:, :-1], ids_t[:, 1:]).backward()
    for name, p in model.encoders.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    other = Media(images=[torch.rand(3, 8, 16)], audios=media.audios, videos=media.videos)
    with torch.no_grad():
        assert not torch.allclose(model(ids_t, other).logits, out.logits)
