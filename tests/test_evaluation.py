"""Generate-and-score: streaming equals offline, sharding is invisible, the CLI's modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLED_RUN, check_samples_vary, tiny_run, torchrun
from pixeljit.checkpoints.load import load_trained
from pixeljit.cli import main
from pixeljit.data import prepare
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.evaluation import GenerationSpec, balanced_labels, evaluate, generate, shard
from pixeljit.metrics import create_extractor, score_images
from pixeljit.metrics.image_sources import IMAGE_SUFFIXES
from pixeljit.training.loop import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-step tiny run on 16-px Fashion-MNIST, and a 300-image packed set (FD statistics)."""
    root = tmp_path_factory.mktemp("eval")
    prepare("fashion-mnist", 16, root / "data", split="test", limit=300)
    train(tiny_run(root / "data", root / "run", **SAMPLED_RUN), progress=False)
    check_samples_vary(load_trained(root / "run"))
    return root


def test_shards_cover_every_index_once():
    for num, world in [(10, 3), (7, 2), (5, 8)]:
        blocks = [shard(num, r, world) for r in range(world)]
        covered = [k for a, b in blocks for k in range(a, b)]
        assert covered == list(range(num))
    assert balanced_labels(8, 13, 10) == [8, 9, 0, 1, 2]
    assert balanced_labels(0, 3, 0) is None


def test_images_do_not_depend_on_batch_size_or_ranks(setup):
    """Image k has seed k's noise whichever batch or rank draws it: one rank in batches that do
    not divide the count, and two ranks of several batches each, give the same six images."""
    model = load_trained(setup / "run")

    def spec(batch_size: int) -> GenerationSpec:
        return GenerationSpec(num=6, sampler=SamplerConfig(steps=2, cfg=2.0), batch_size=batch_size)

    whole = torch.cat([u8 for u8, _ in generate(model, spec(6))])
    assert len({bytes(image.flatten().tolist()) for image in whole}) == 6  # no seed repeated
    batches = torch.cat([u8 for u8, _ in generate(model, spec(4))])  # 4 + 2
    assert torch.equal(whole, batches)
    split = torch.cat([u8 for r in range(2) for u8, _ in generate(model, spec(2), r, 2)])
    assert torch.equal(whole, split)  # ranks of 3 images each, in batches of 2 + 1


def test_streaming_scores_equal_offline_scores(setup, tmp_path):
    model = load_trained(setup / "run")
    extractor = create_extractor("fmnist-cnn")
    from pixeljit.evaluation import dataset_stats_for

    ref = dataset_stats_for(str(setup / "data"), extractor, 16, 1)
    spec = GenerationSpec(num=40, sampler=SamplerConfig(steps=2, cfg=1.5), batch_size=16)
    online = evaluate(model, spec, extractor, ref, ("fd", "kid", "pr", "is"), save_dir=tmp_path)
    assert 0.0 <= online["class_accuracy"] <= 1.0 and online["count"] == 40
    offline = score_images(str(tmp_path), extractor, ref, ("fd", "kid", "pr", "is")).as_dict()
    for key in ("FD-FMNIST", "KID", "precision", "recall", "IS-FMNIST"):
        assert online[key] == pytest.approx(offline[key], rel=1e-6, abs=1e-9), key
    # the streamed class accuracy is the classifier's on the saved images, image k asked for
    # class balanced_labels(0, 40)[k] (the packed labels are in the classifier's order)
    from pixeljit.data import PackedDataset
    from pixeljit.evaluation import score_real_images
    from pixeljit.metrics.labelled import label_order
    from pixeljit.metrics.score import class_accuracy

    assert label_order(model.class_names, extractor) is None
    labels = torch.tensor(balanced_labels(0, 40, model.net.config.num_classes))
    assert online["class_accuracy"] == class_accuracy(str(tmp_path), labels, extractor)
    # a 2-step model's samples fall in one class (accuracy 0.1 either way): real test images,
    # streamed in batches with their labels, pin the count where the classifier is right
    real = PackedDataset(setup / "data")
    streamed = score_real_images(real, 40, extractor, ref, ("fd",), batch_size=16)
    images, truth = torch.from_numpy(real.slice(0, 40)), torch.from_numpy(real.labels[:40])
    assert streamed["class_accuracy"] == class_accuracy(images, truth, extractor) > 0.5


def test_real_images_score_far_better_than_an_untrained_model(setup, tmp_path):
    """The floor: real test images against the data set's statistics beat 2-step model samples."""
    ref = tmp_path / "ref.npz"
    assert main(["eval", "--make-ref", str(setup / "data"), "--size", "16", "--channels", "1",
                 "--extractor", "fmnist-cnn", "--out", str(ref)]) == 0  # fmt: skip
    real = tmp_path / "real.npz"
    other = prepare("fashion-mnist", 16, tmp_path / "other", split="train", limit=300)
    from pixeljit.data import PackedDataset

    images = PackedDataset(other.out_dir).slice(0, 300)  # (300, 1, 16, 16)
    np.savez(real, arr_0=images.transpose(0, 2, 3, 1))
    out = tmp_path / "real.json"
    assert main(["eval", "--images", str(real), "--ref", str(ref), "--size", "16",
                 "--channels", "1", "--metrics", "fd", "--out", str(out)]) == 0  # fmt: skip
    floor = json.loads(out.read_text())["scores"]["FD-FMNIST"]
    gen = tmp_path / "gen.json"
    assert main(["eval", "--checkpoint", str(setup / "run"), "--num", "60", "--steps", "2",
                 "--ref", str(ref), "--metrics", "fd", "--out", str(gen)]) == 0  # fmt: skip
    assert json.loads(gen.read_text())["scores"]["FD-FMNIST"] > 5 * floor


def test_sweep_covers_every_ema_and_scale(setup, tmp_path, capsys):
    out = tmp_path / "sweep.json"  # 2 steps: a single step, at t = 0, is outside the interval
    argv = ["eval", "--checkpoint", str(setup / "run"), "--num", "20", "--steps", "2",
            "--ref", str(setup / "data"), "--sweep-cfg", "1.0", "2.0", "0.5", "--emas", "all",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    pairs = {(r["weights"], r["cfg"]) for r in result["sweep"]}
    assert pairs == {(w, c) for w in ("ema:0.995", "ema:0.999") for c in (1.0, 1.5, 2.0)}
    assert result["best"]["FD-FMNIST"] == min(r["FD-FMNIST"] for r in result["sweep"])
    for w in ("ema:0.995", "ema:0.999"):  # each scale was applied: three different FDs
        fds = {r["FD-FMNIST"] for r in result["sweep"] if r["weights"] == w}
        assert len(fds) == 3, result["sweep"]
    assert "best: weights" in capsys.readouterr().out


def test_eval_errors(setup, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(setup / "run"), "--num", "10"]) == 2
    assert "need --ref" in capsys.readouterr().err
    assert main(["eval", "--images", str(tmp_path), "--ref", "x.npz"]) == 2
    err = capsys.readouterr().err
    assert f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {tmp_path}" in err
    assert ".tif" in IMAGE_SUFFIXES  # what `pixeljit prepare` reads
    assert main(["eval", "--make-ref", str(setup / "data"), "--out", str(tmp_path / "r.npz")]) == 2
    assert "--make-ref needs --size and --channels" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_score_like_one(setup, tmp_path):
    flags = ["eval", "--checkpoint", str(setup / "run"), "--num-images", "24", "--steps", "2",
             "--ref", str(setup / "data"), "--metrics", "fd", "pr", "--batch-size", "8",
             "--device", "cpu"]  # fmt: skip
    one = tmp_path / "one.json"
    assert main([*flags, "--out", str(one)]) == 0
    two = tmp_path / "two.json"
    done = torchrun([*flags, "--out", str(two)])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.loads(Path(f).read_text())["scores"] for f in (one, two))
    assert a["FD-FMNIST"] == pytest.approx(b["FD-FMNIST"], rel=1e-6)
    assert (a["precision"], a["recall"]) == (b["precision"], b["recall"])


def test_sets_in_folders_of_the_same_name_never_share_cached_statistics(tmp_path):
    """The cache of a data set's statistics was keyed by the folder's name alone: a second
    `--ref somewhere/data` silently scored against the first `data`'s statistics."""
    from pixeljit.data import pack_arrays
    from pixeljit.evaluation import dataset_stats_for
    from pixeljit.metrics import compute_dataset_stats

    extractor = create_extractor("fmnist-cnn")
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (20, 1, 16, 16), dtype=np.uint8)
    bright = rng.integers(190, 256, (20, 1, 16, 16), dtype=np.uint8)
    for parent, images in (("a", dark), ("b", bright)):
        pack_arrays(images, tmp_path / parent / "data", np.zeros(20, np.int64))
        got = dataset_stats_for(str(tmp_path / parent / "data"), extractor, 16, 1)
        want = compute_dataset_stats(torch.from_numpy(images), extractor)
        np.testing.assert_allclose(got.mu, want.mu, rtol=1e-6, atol=1e-9)


def test_the_demo_scores_itself_beside_real_held_out_images(fmnist16, tmp_path):
    """`pixeljit demo` ends with its samples' class accuracy and FD beside the same scores of as
    many real held-out images (the floor), also written to score.json."""
    import json

    from conftest import tiny_run
    from pixeljit.cli.demo import SCORE_FILE, score_demo, score_lines
    from pixeljit.data.packed import PackedDataset
    from pixeljit.metrics import class_accuracy
    from pixeljit.training.loop import train

    data, held = fmnist16(256), fmnist16(64)
    result = train(tiny_run(data, tmp_path / "run"), progress=False)
    cfg = tiny_run(data, tmp_path / "run")
    score = score_demo(cfg, result.checkpoint, num=40, held_out=(str(held), None))
    assert json.loads((tmp_path / "run" / SCORE_FILE).read_text()) == score
    real = PackedDataset(held)
    images, labels = torch.from_numpy(real.slice(0, 40)), torch.from_numpy(real.labels[:40])
    expected = class_accuracy(images, labels, create_extractor("fmnist-cnn"), batch_size=40)
    assert score["real_test_images"]["class_accuracy"] == pytest.approx(expected)
    # two training steps make noise: far from the real images, near chance for the classifier
    model, floor = score["scores"], score["real_test_images"]
    assert model["FD-FMNIST"] > 5 * floor["FD-FMNIST"]
    assert model["class_accuracy"] < 0.5 < floor["class_accuracy"]
    lines = score_lines(score)
    assert f"{model['FD-FMNIST']:.2f}" in lines and "real test images" in lines
    # it records the weights it scored: `convert --hub` publishes it with them, not with others
    assert score["model"]["step"] == result.step and score["model"]["weights"] == "ema:0.995"
    hub = tmp_path / "hub"
    assert main(["convert", str(tmp_path / "run"), "--hub", str(hub)]) == 0
    card = (hub / "README.md").read_text()
    assert f"| FD-FMNIST | {model['FD-FMNIST']:.6g} |" in card
    assert "As recorded in `score.json`" in card
    assert main(["convert", str(tmp_path / "run"), "--hub", str(tmp_path / "hub2"),
                 "--weights", "ema:0.999"]) == 0  # fmt: skip
    other = (tmp_path / "hub2" / "README.md").read_text()
    assert "Unknown: no evaluation of these weights" in other


def test_images_with_labels_get_the_class_accuracy(setup, tmp_path, capsys):
    """An .npz from `pixeljit sample` carries its labels: eval --images scores their class
    accuracy (it was left out), by the same classifier as a --checkpoint's images; labels outside
    the classifier's classes give none, and labels that do not match the images are refused."""
    from pixeljit.metrics import class_accuracy

    images = tmp_path / "s.npz"
    assert main(["sample", str(setup / "run"), "--num", "20", "--steps", "2", "--cfg", "1.5",
                 "--out", str(images)]) == 0  # fmt: skip
    out = tmp_path / "scores.json"
    argv = ["eval", "--images", str(images), "--ref", str(setup / "data"), "--metrics", "fd",
            "--extractor", "fmnist-cnn", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "class_accuracy" in capsys.readouterr().out
    scores = json.loads(out.read_text())["scores"]
    saved = np.load(images)
    pixels = torch.from_numpy(saved["arr_0"]).permute(0, 3, 1, 2)
    expected = class_accuracy(pixels, torch.from_numpy(saved["labels"]),
                              create_extractor("fmnist-cnn"))  # fmt: skip
    assert scores["class_accuracy"] == pytest.approx(expected) and scores["count"] == 20
    for labels, accuracy in ((saved["labels"] + 10, False), (saved["labels"][:5], None)):
        other = tmp_path / f"other{len(labels)}.npz"
        np.savez(other, arr_0=saved["arr_0"], labels=labels)
        if accuracy is None:
            assert main([*argv[:2], str(other), *argv[3:-2]]) == 2
            assert "one per image" in capsys.readouterr().err
        else:  # left out, and said so (it vanished without a word)
            with pytest.warns(UserWarning, match="labels up to 1[0-9].*knows 10 classes"):
                assert main([*argv[:2], str(other), *argv[3:-2]]) == 0
            assert "class_accuracy" not in capsys.readouterr().out
    # an .npz that names its classes, with labels numbered in another order (an image folder's
    # alphabetical one), is matched by name: the same accuracy. Real test images, because a
    # 2-step model's samples fall in one class, where every numbering scores the same
    from pixeljit.data import PackedDataset

    names = [str(n) for n in saved["class_names"]]
    assert names == list(create_extractor("fmnist-cnn").class_names)
    real = PackedDataset(setup / "data")
    pixels, truth = real.slice(0, 40).transpose(0, 2, 3, 1), real.labels[:40]
    alphabetical = sorted(names)
    relabelled = np.array([alphabetical.index(names[k]) for k in truth])

    def accuracy(labels, class_names=None) -> float:
        npz, report = tmp_path / "real.npz", tmp_path / "real.json"
        named = {} if class_names is None else {"class_names": np.array(class_names)}
        np.savez(npz, arr_0=pixels, labels=labels, **named)
        assert main([*argv[:2], str(npz), *argv[3:-1], str(report), "--overwrite"]) == 0
        return json.loads(report.read_text())["scores"]["class_accuracy"]

    right = accuracy(truth)
    assert right > 0.5
    assert accuracy(relabelled, alphabetical) == right
    assert accuracy(relabelled) < right / 2  # unnamed, the numbers are taken as they are


def test_class_accuracy_matches_labels_to_the_classifier_by_name(fmnist16):
    """A Fashion-MNIST image folder numbers its classes alphabetically ('Ankle_boot' = 0): its
    model's class accuracy was scored against the classifier's order (0.23 against 0.45 for a
    worse model). Labels are now matched by name; classes it does not know leave it out."""
    import warnings

    from pixeljit.data.fashion_mnist import CLASS_NAMES
    from pixeljit.data.packed import PackedDataset
    from pixeljit.evaluation import score_labelled

    real = PackedDataset(fmnist16(64))
    images, labels = torch.from_numpy(real.slice(0, 64)), torch.from_numpy(real.labels[:64])
    extractor = create_extractor("fmnist-cnn")

    def accuracy(y, names):
        scores = score_labelled([(images, y)], 10, extractor, None, (), 64, names)
        return scores.get("class_accuracy")

    truth = accuracy(labels, CLASS_NAMES)
    assert truth > 0.5  # real held-out 16-px images in its own order (chance is 0.1)
    folder = {n: n.replace("/", "_").replace(" ", "_") for n in CLASS_NAMES}  # 'Ankle_boot'
    folders = sorted(folder.values())
    as_folders = torch.tensor([folders.index(folder[CLASS_NAMES[k]]) for k in labels])
    assert accuracy(as_folders, folders) == truth
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert accuracy(labels, [str(d) for d in range(10)]) is None  # digits: not its classes
    assert "class accuracy left out" in str(caught[0].message)


def test_auto_extractor_is_the_one_the_reference_records(setup, tmp_path, capsys):
    """Statistics made with fmnist-cnn on RGB images: `--extractor auto` chose effnet-lite0 for
    RGB images and failed on a feature size, although the file names its extractor."""
    from pixeljit.data.packed import PackedDataset

    grey = PackedDataset(setup / "data").slice(0, 40)  # (40, 1, 16, 16) uint8
    images = tmp_path / "rgb.npz"
    np.savez(images, arr_0=np.repeat(grey.transpose(0, 2, 3, 1), 3, axis=3))
    ref = tmp_path / "ref.npz"
    assert main(["eval", "--make-ref", str(images), "--size", "16", "--channels", "3",
                 "--extractor", "fmnist-cnn", "--out", str(ref)]) == 0  # fmt: skip
    out = tmp_path / "scores.json"
    assert main(["eval", "--images", str(images), "--ref", str(ref), "--metrics", "fd",
                 "--out", str(out)]) == 0  # fmt: skip
    scored = json.loads(out.read_text())
    assert scored["extractor"] == "fmnist-cnn"
    assert scored["scores"]["FD-FMNIST"] == pytest.approx(0.0, abs=1e-6)  # the same images


def test_make_ref_never_writes_over_its_images_or_makes_a_folder_of_a_file_name(
    setup, tmp_path, capsys
):
    """`eval --make-ref imgs.npz --out imgs.npz --overwrite` replaced the images with their
    statistics; `--save-images sv.png` made a folder called sv.png."""
    from cli_errors import cli_error

    images = tmp_path / "imgs.npz"
    np.savez(images, arr_0=np.zeros((4, 16, 16, 1), dtype=np.uint8))
    before = images.read_bytes()
    err = cli_error(capsys, ["eval", "--make-ref", str(images), "--size", "16", "--channels",
                             "1", "--out", str(images), "--overwrite"])  # fmt: skip
    assert "is an input of this command" in err and images.read_bytes() == before
    assert main(["eval", "--make-ref", str(images), "--size", "20", "--channels", "3",
                 "--extractor", "fmnist-cnn", "--out", str(tmp_path / "ref.npz")]) == 0  # fmt: skip
    assert "resized from 16×16 to 20×20, grey → RGB" in capsys.readouterr().out  # said, not silent
    saved = str(tmp_path / "sv.png")
    err = cli_error(capsys, ["eval", "--checkpoint", str(setup / "run"), "--num", "20", "--ref",
                             str(setup / "data"), "--save-images", saved])  # fmt: skip
    assert "writes a folder of PNGs" in err and f"{tmp_path / 'sv.png'}/" in err
    assert not (tmp_path / "sv.png").exists()
