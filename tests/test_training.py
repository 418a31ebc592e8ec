"""Training, evaluation and export on real (small, generated) MP4 files in the ABAW layout."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from emoframe.training.abaw_format import write_annotation
from emoframe.training.datasets import discover, load_items, synth_split
from emoframe.training.evaluate import apply_condition, evaluate, hidden_stretches
from emoframe.training.export import MODEL_FILE, example_inputs, export, read_metadata
from emoframe.training.metrics import per_class_f1, summarize
from emoframe.training.model import ModelConfig
from emoframe.training.train import TrainConfig, load_pipeline, train
from emoframe.workers.spec.contract import CLASSES, PREPROCESSING, fingerprint


@pytest.fixture(scope="module")
def data(small_synth, tmp_path_factory):
    return load_items(synth_split(small_synth), tmp_path_factory.mktemp("cache"))


def test_macro_f1_matches_a_hand_computed_case():
    y = np.array([0, 0, 1, 1, 2, -1, -1])
    p = np.array([0, 1, 1, 1, 0, 5, 5])  # -1 frames are ignored whatever is predicted
    m = summarize(y, p)
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 -> 0; classes 3-7 absent -> 0
    np.testing.assert_allclose(m["per_class_f1"][:3], [0.5, 0.8, 0.0])
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8) / 8)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["frames"] == 5
    assert per_class_f1(np.zeros((8, 8), int)).sum() == 0


def test_short_training_lowers_the_loss_and_resume_continues(data, tmp_path, monkeypatch):
    """A run stopped in its second epoch (Ctrl-C while validating, before that epoch's checkpoint) and resumed
    trains the last two epochs only and ends with the weights and history of a run that was never stopped."""
    import emoframe.training.train as training_train

    cfg = TrainConfig(epochs=3, steps_per_epoch=8, batch_size=8, warmup_steps=2, lr=3e-3,
                      model=ModelConfig(dim=32, self_layers=1))
    train(cfg, data, data[:1], tmp_path / "straight", progress=False)
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["history"]
    assert len(straight) == 3 and straight[2]["loss"] < straight[0]["loss"]
    assert (tmp_path / "straight" / "best.pt").exists()

    real, validated, interrupt_at = training_train.evaluate_videos, [], [2]

    def validate(*args, **kwargs):  # once per epoch trained; the interrupted run stops in its second
        validated.append(1)
        if len(validated) in interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training_train, "evaluate_videos", validate)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, data[:1], run, progress=False)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 0 and not (run / "history.json").exists()
    validated.clear()
    interrupt_at.clear()
    train(cfg, data, data[:1], run, resume=True, progress=False)
    assert len(validated) == 2  # epochs 2 and 3 trained, epoch 1 not again
    resumed = json.loads((run / "history.json").read_text())["history"]
    assert [h["epoch"] for h in resumed] == [0, 1, 2]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in straight]
    a = torch.load(run / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="different configuration"):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 4}), data, data[:1], run, resume=True, progress=False)


def test_drawn_reader_runs_are_cross_fitted_saved_and_reused(data, tmp_path):
    """With reader="drawn", each training video's evidence comes from the fold reader that did not see it, the
    readers are saved, a resumed run reuses them, and the exported pipeline reads faces with FER."""
    from emoframe.training.readers import DrawnFaceReader, FerReader
    from emoframe.training.train import prepare_reader

    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, warmup_steps=1, reader="drawn", reader_epochs=1,
                      model=ModelConfig(dim=32))
    reader, evidence = prepare_reader(cfg, data, tmp_path)
    saved = torch.load(tmp_path / "reader.pt", weights_only=False)
    assert isinstance(reader, DrawnFaceReader) and len(saved["folds"]) == 2
    assert [e.shape for e in evidence] == [(len(v), 8) for v in data]
    # video j's evidence is fold (j % 2)'s: a reader trained on the other videos only
    fold0 = DrawnFaceReader()
    fold0.load_state_dict(saved["folds"][0])
    from emoframe.training.readers import read_evidence

    np.testing.assert_allclose(read_evidence(fold0, data[0].face), evidence[0], atol=1e-5)
    assert not np.allclose(read_evidence(reader, data[0].face), evidence[0], atol=1e-3)
    mtime = (tmp_path / "reader.pt").stat().st_mtime_ns
    _, again = prepare_reader(cfg, data, tmp_path)
    assert (tmp_path / "reader.pt").stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again[1], evidence[1], atol=1e-6)
    train(cfg, data, data[:1], tmp_path, progress=False)
    assert isinstance(load_pipeline(tmp_path / "best.pt").reader, DrawnFaceReader)
    # a run that reuses saved readers trains the fusion model exactly like one that trained them
    fresh = tmp_path / "fresh"
    train(cfg, data, data[:1], fresh, progress=False)
    a = torch.load(tmp_path / "best.pt", weights_only=False)["model"]
    b = torch.load(fresh / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(load_pipeline(tmp_path / "best.pt", reader="fer").reader, FerReader)


def test_export_round_trip_equals_the_training_model(data, tmp_path):
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, warmup_steps=1, model=ModelConfig(dim=32))
    train(cfg, data, data[:1], tmp_path / "run", progress=False)
    model = load_pipeline(tmp_path / "run" / "best.pt")
    vdir = export(model, tmp_path / "repo", metrics={"macro_f1": 0.5}, data={"d": 1})
    assert vdir.name == "1" and (vdir / "model.py").exists() and (vdir.parent / "config.pbtxt").exists()
    scripted = torch.jit.load(str(vdir / MODEL_FILE))
    # Nothing pinned to the CPU: a tensor made inside forward is frozen onto the tracing device, and the
    # file then fails on a KIND_GPU instance ("found at least two devices, cuda:0 and cpu").
    for name, module in scripted.named_modules():
        try:
            code = module.code
        except AttributeError:  # a module with no methods of its own (a container)
            continue
        assert '"cpu"' not in code, f"{name or 'model'} has a CPU constant:\n{code}"
    for b in (1, 3, 16):
        x = example_inputs(b, seed=b)
        torch.testing.assert_close(scripted(*x), model(*x), rtol=1e-5, atol=1e-6)
    meta = read_metadata(vdir)
    assert meta["classes"] == list(CLASSES) and meta["contract_fingerprint"] == fingerprint()
    assert meta["contract"]["preprocessing"]["crop_size"] == PREPROCESSING.crop_size
    assert meta["metrics"] == {"macro_f1": 0.5} and meta["commit"]
    assert export(model, tmp_path / "repo").name == "2"  # never overwrites a version
    with pytest.raises(FileExistsError):
        export(model, tmp_path / "repo", version=1)


def test_evaluate_reports_every_condition_with_and_without_voting(data, tmp_path):
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, warmup_steps=1, model=ModelConfig(dim=32))
    train(cfg, data, [], tmp_path / "run", progress=False)
    res = evaluate(load_pipeline(tmp_path / "run" / "best.pt"), data[:2])
    assert set(res) == {"full", "faces_hidden_50", "audio_hidden_50", "no_audio_track"}
    n = sum(int((v.labels >= 0).sum()) for v in data[:2])
    for by_vote in res.values():
        for m in by_vote.values():
            assert m["frames"] == n and 0 <= m["macro_f1"] <= 1 and len(m["per_class_f1"]) == 8
            assert np.array(m["confusion"]).sum() == n


def test_evaluation_reads_each_distinct_crop_once_and_answers_like_the_pipeline(data, tmp_path):
    from emoframe.training.evaluate import infer_fn, score

    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, warmup_steps=1, model=ModelConfig(dim=32))
    train(cfg, data, [], tmp_path / "run", progress=False)
    pipeline = load_pipeline(tmp_path / "run" / "best.pt")
    read = []
    pipeline.reader.register_forward_hook(lambda mod, args, out: read.append(len(args[0])))
    infer = infer_fn(pipeline, torch.device("cpu"))
    batch = {k: v.numpy().copy() for k, v in zip(("face", "face_mask", "mel", "audio_mask"),
                                                             example_inputs(batch=3))}
    batch["face"][1] = batch["face"][0]  # a repeated window: its crops must not be read again
    got = next(infer([batch]))
    with torch.inference_mode():
        want = pipeline(*[torch.from_numpy(batch[k]) for k in ("face", "face_mask", "mel", "audio_mask")]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert read[0] == 2 * PREPROCESSING.window  # windows 0 and 2; window 1 repeats window 0
    read.clear()
    first = score(data[:1], infer)
    reads_first = sum(read)
    assert reads_first <= len(data[0])  # overlapping windows: each frame's crop read at most once
    assert score(data[:1], infer, voting=False) and score(data[:1], infer) == first and sum(read) == reads_first


def test_evaluate_scores_a_deployed_model_like_its_checkpoint(data, small_synth, tmp_path, capsys):
    """`emoframe evaluate` takes a model-repository version, its model.pt or a checkpoint; all three score alike
    (the export is the checkpoint's model), and a model of another contract is refused with a clear message."""
    from emoframe.flows.cli.main import main
    from emoframe.training.evaluate import ModelFileError, evaluate_infer, load_for_evaluation

    cfg = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=4, warmup_steps=1, model=ModelConfig(dim=32))
    train(cfg, data, [], tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "best.pt"
    vdir = export(load_pipeline(ckpt), tmp_path / "repo", metrics={})
    results = [evaluate_infer(load_for_evaluation(p)[0], data, conditions=("full",))["full"]["voting"]
               for p in (vdir, vdir / MODEL_FILE, ckpt)]
    for r in results[1:]:
        assert r["confusion"] == results[0]["confusion"]
        assert r["macro_f1"] == pytest.approx(results[0]["macro_f1"], abs=1e-9)

    assert main(["evaluate", str(vdir), "--data", str(small_synth), "--cache", str(tmp_path / "cache"),
                 "--conditions", "full"]) == 0
    out = capsys.readouterr().out
    assert "exported model" in out and f"{results[0]['macro_f1']:.4f}" in out

    meta = read_metadata(vdir)
    (vdir / "metadata.json").write_text(json.dumps({**meta, "contract_fingerprint": "0000000000000000"}))
    with pytest.raises(ModelFileError, match="exported with contract 0000000000000000"):
        load_for_evaluation(vdir)
    with pytest.raises(SystemExit, match="emoframe evaluate: .*exported with contract"):
        main(["evaluate", str(vdir), "--data", str(small_synth)])
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="neither an exported TorchScript model nor a training checkpoint"):
        load_for_evaluation(tmp_path / "junk.pt")
    with pytest.raises(ModelFileError, match="has no model.pt"):
        load_for_evaluation(tmp_path)


def test_hidden_conditions_hide_about_half_in_stretches(data):
    v = max(data, key=len)
    hide = hidden_stretches(2000, 25.0, np.random.default_rng(0))
    assert 0.4 < hide.mean() < 0.6
    runs = np.diff(np.flatnonzero(np.diff(hide.astype(int)) != 0))
    assert runs.min() >= 12  # at least 0.5 s at 25 fps
    a = apply_condition(v, "faces_hidden_50", 0)
    assert not (a["face_mask"] & ~v.face_mask).any() and a["face_mask"].sum() < v.face_mask.sum()
    b = apply_condition(v, "no_audio_track", 0)
    assert not b["audio_mask"].any() and not b["mel"].any()


def test_abaw_layout_with_cropped_frames_and_two_person_videos(small_synth, tmp_path):
    """A fixture laid out exactly like Aff-Wild2: annotations/, videos/, cropped_aligned/<id>/00001.jpg."""
    src = synth_split(small_synth)[0]
    (tmp_path / "ann").mkdir()
    (tmp_path / "vid").mkdir()
    shutil.copy(src.video, tmp_path / "vid" / "clip.mp4")
    labels = np.loadtxt(src.annotation, skiprows=1, dtype=int)
    labels[:5] = -1
    write_annotation(tmp_path / "ann" / "clip_left.txt", labels)  # two-person video: <video>_left
    crop = tmp_path / "cropped" / "clip_left"
    crop.mkdir(parents=True)
    face = np.full((112, 112, 3), 180, np.uint8)
    cv2.circle(face, (56, 56), 30, (20, 40, 60), -1)
    for i in range(len(labels)):
        if i % 4:  # every 4th image missing = face missing
            cv2.imwrite(str(crop / f"{i + 1:05d}.jpg"), face)
    items = discover(tmp_path / "ann", tmp_path / "vid", tmp_path / "cropped")
    assert [i.video.name for i in items] == ["clip.mp4"]
    (v,) = load_items(items, None)
    assert len(v) == len(labels) and (v.labels[:5] == -1).all()
    np.testing.assert_array_equal(v.face_mask, np.arange(len(labels)) % 4 != 0)
    write_annotation(tmp_path / "ann" / "orphan.txt", [0, 1])
    with pytest.raises(FileNotFoundError, match="orphan"):
        discover(tmp_path / "ann", tmp_path / "vid")


def test_annotation_frame_count_must_match_the_video(small_synth, tmp_path):
    from emoframe.training.features import load_video

    item = synth_split(small_synth)[0]
    with pytest.raises(ValueError, match="one label per frame"):
        load_video(item.video, np.zeros(3, np.int64), None)


def test_cached_videos_come_back_memory_mapped_and_are_not_recomputed(small_synth, tmp_path, monkeypatch):
    """The feature cache is what lets an Aff-Wild2-size set train without being read into memory: every
    field comes back as a read-only memory map of its .npy file, equal to what was computed, and a second
    load decodes nothing. A cropped_aligned folder is its own cache entry (its crops, not the video's)."""
    import emoframe.training.features as features

    items = synth_split(small_synth)[:2]
    first = load_items(items, tmp_path / "cache")
    for v in first:
        for name in ("face", "face_mask", "mel", "audio_mask"):
            a = getattr(v, name)
            assert isinstance(a, np.memmap) and not a.flags.writeable, name
    fresh, _ = features.compute_inputs(items[0].video)
    for name, a in fresh.items():
        np.testing.assert_array_equal(getattr(first[0], name), a)
    monkeypatch.setattr(features, "compute_inputs", lambda *a, **k: pytest.fail("decoded again"))
    again = load_items(items, tmp_path / "cache")
    np.testing.assert_array_equal(again[1].mel, first[1].mel)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == \
        sorted(p.name for p in (tmp_path / "cache").iterdir())  # one folder per video, no temporary left


def test_the_drawn_reader_trains_the_same_from_memory_maps_as_from_arrays(data):
    """Crops are gathered per batch from each video's (memory-mapped) array, never concatenated: the same
    seed gives the same reader as from arrays held in memory."""
    from emoframe.training.readers import train_drawn_reader

    videos = data[:2]
    args = dict(seed=3, epochs=1, batch=32)
    mapped = train_drawn_reader([v.face for v in videos], [v.labels for v in videos],
                                [v.face_mask for v in videos], **args)
    held = train_drawn_reader([np.array(v.face) for v in videos], [v.labels for v in videos],
                              [np.array(v.face_mask) for v in videos], **args)
    for a, b in zip(mapped.state_dict().values(), held.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
