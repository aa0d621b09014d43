"""A probe of the metrics found: the Inception Score of a `sample --out X.npz` (images in class
blocks) far too low, since each split held one or two classes; class accuracy of Fashion-MNIST
labels against ImageNet's classes (always 0); `--extractor auto` choosing by a class count of
10 for every --images / --make-ref set; the accuracy's counts summed on the CPU under NCCL;
--seed 0, --cfg 0 and --num 0 taken with --images as if not given; KID's subset size shrunk
without a word; and three messages whose fix did not work or named nothing."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

import pixeljit
from conftest import TINY_NET, torchrun
from pixeljit.cli import main
from pixeljit.data import PackedDataset
from pixeljit.evaluation import score_image_source
from pixeljit.metrics import (
    DatasetStats,
    KIDConfig,
    ScoreConfig,
    class_accuracy,
    compute_dataset_stats,
    create_extractor,
    kernel_inception_distance,
    save_dataset_stats,
    score_images,
)
from pixeljit.metrics.distances import inception_score

SIZE = 16  # fmnist16's images


def _error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.split("error:", 1)[1]


def _is_by_hand(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """IS in float64 with numpy alone: the rows' log-probabilities sorted as tuples, then
    permuted by RandomState(2020) (the documented order), cut at i·N // splits."""
    z = logits - logits.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    order = sorted(range(len(log_p)), key=lambda i: tuple(log_p[i]))
    p = np.exp(log_p[np.asarray(order)][np.random.RandomState(2020).permutation(len(log_p))])
    n, per_split = len(p), []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1)
        per_split.append(np.exp(kl.mean()))
    return float(np.mean(per_split)), float(np.std(per_split))


@pytest.fixture(scope="module")
def real(fmnist16):
    """300 real 16-px test images (N, C, H, W) uint8 and their labels."""
    data = PackedDataset(fmnist16(300))
    return data.slice(0, 300), data.labels[:300].astype(np.int64)


# ------------------------------------------------------------------ 1: IS and the rows' order


def test_inception_score_does_not_depend_on_the_order_of_the_rows():
    """Logits in class blocks (as `sample --out X.npz` writes them) scored about 1 (each split
    one class); now every order of the same rows gives the same IS, the one computed by hand
    on the documented order, and N need not be a multiple of the splits."""
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(7), 144)[:1003]  # 1003 rows in 7 class blocks
    logits = rng.standard_normal((1003, 7)) + 6.0 * np.eye(7)[classes]
    blocks = inception_score(logits, splits=10)
    for seed in range(3):
        shuffled = logits[np.random.default_rng(seed).permutation(len(logits))]
        assert inception_score(torch.from_numpy(shuffled), splits=10) == blocks
    mean, std = _is_by_hand(logits, 10)
    assert blocks[0] == pytest.approx(mean, rel=1e-12)
    assert blocks[1] == pytest.approx(std, rel=1e-9)
    probs = torch.softmax(torch.from_numpy(logits), dim=1)  # the same images as probabilities
    assert inception_score(probs, splits=10, from_logits=False) == pytest.approx(blocks, rel=1e-12)
    assert blocks[0] > 4.0  # well above the ~1 of class-pure splits


def test_eval_images_scores_the_same_is_for_class_blocks_under_torchrun(real, tmp_path):
    """The real images in class blocks, scored by two gloo ranks, get the IS and the class
    accuracy of the same images in their own order scored by one process."""
    images, labels = real
    order = np.argsort(labels, kind="stable")
    mixed, blocks = tmp_path / "mixed.npz", tmp_path / "blocks.npz"
    np.savez(mixed, arr_0=images.transpose(0, 2, 3, 1), labels=labels)
    np.savez(blocks, arr_0=images[order].transpose(0, 2, 3, 1), labels=labels[order])
    flags = ["eval", "--metrics", "is", "--extractor", "fmnist-cnn"]
    assert main([*flags, "--images", str(mixed), "--out", str(tmp_path / "one.json")]) == 0
    done = torchrun([*flags, "--images", str(blocks), "--out", str(tmp_path / "two.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["scores"] for n in ("one", "two"))
    expected = class_accuracy(images, labels, create_extractor("fmnist-cnn"))
    assert one["class_accuracy"] == two["class_accuracy"] == pytest.approx(expected)
    assert two["IS-FMNIST"] == pytest.approx(one["IS-FMNIST"], rel=1e-6)
    assert one["IS-FMNIST"] > 5.0


# ------------------------------------------------------- 2, 3: label space and `auto`'s choice


def test_class_accuracy_needs_the_classifiers_label_space(real, tmp_path):
    """Fashion-MNIST labels scored by EfficientNet-Lite0 (ImageNet's 1000 classes) reported
    class_accuracy 0, and 3-class labels scored by the 10-class classifier a number: both are
    left out, said; labels named by the classifier's own names still score."""
    images, labels = real
    effnet, cnn = create_extractor("effnet-lite0"), create_extractor("fmnist-cnn")
    ten = tmp_path / "ten.npz"
    np.savez(ten, arr_0=images[:20].transpose(0, 2, 3, 1), labels=labels[:20])
    with pytest.warns(UserWarning, match="left out: the labels of .* are of 10 classes, but the "
                      "effnet-lite0 classifier's 1000"):  # fmt: skip
        scores = score_image_source(str(ten), effnet, None, ("is",))
    assert "class_accuracy" not in scores and scores["count"] == 20
    few = labels < 3
    three = tmp_path / "three.npz"
    np.savez(three, arr_0=images[few].transpose(0, 2, 3, 1), labels=labels[few])
    with pytest.warns(UserWarning, match="are of 3 classes, but the fmnist-cnn"):
        assert "class_accuracy" not in score_image_source(str(three), cnn, None, ("is",))
    named = tmp_path / "named.npz"  # the same 3 classes, named: the classifier's own space
    np.savez(named, arr_0=images[few].transpose(0, 2, 3, 1), labels=labels[few],
             class_names=np.array(cnn.class_names))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = score_image_source(str(named), cnn, None, ("is",))
    expected = class_accuracy(images[few], labels[few], cnn)
    assert scores["class_accuracy"] == pytest.approx(expected) and expected > 0.5


def _extractor_of(report) -> str:
    return json.loads(report.read_text())["extractor"]


def test_auto_picks_the_same_extractor_for_a_model_its_images_and_their_statistics(real, tmp_path):
    """A grey 3-class model's --checkpoint eval used effnet-lite0, but its images (--images, a
    folder with labels.csv or an .npz with labels) and their --make-ref used fmnist-cnn, as if
    every set had 10 classes. The same facts now give the same choice in every mode; grey
    10-class and unlabelled sets keep fmnist-cnn."""
    torch.manual_seed(0)
    grey3 = pixeljit.JiTConfig(**{**TINY_NET.to_dict(), "in_channels": 1})
    model = tmp_path / "grey3.safetensors"
    pixeljit.save_safetensors(pixeljit.JiT(grey3), model)
    pngs = tmp_path / "pngs"
    assert main(["eval", "--checkpoint", str(model), "--num", "12", "--steps", "2", "--metrics",
                 "is", "--save-images", str(pngs), "--out",
                 str(tmp_path / "c.json")]) == 0  # fmt: skip
    assert _extractor_of(tmp_path / "c.json") == "effnet-lite0"
    with pytest.warns(UserWarning, match="are of 3 classes"):
        assert main(["eval", "--images", str(pngs), "--metrics", "is", "--out",
                     str(tmp_path / "i.json")]) == 0  # fmt: skip
    assert _extractor_of(tmp_path / "i.json") == "effnet-lite0"
    assert main(["eval", "--make-ref", str(pngs), "--size", "8", "--channels", "1", "--out",
                 str(tmp_path / "r.npz")]) == 0  # fmt: skip
    assert str(np.load(tmp_path / "r.npz")["extractor"]) == "effnet-lite0"
    images, labels = real
    few = labels < 3  # real images of 3 classes: an .npz, and a data set of class folders
    three = tmp_path / "three.npz"
    np.savez(three, arr_0=images[few][:12].transpose(0, 2, 3, 1), labels=labels[few][:12])
    assert main(["eval", "--make-ref", str(three), "--size", "16", "--channels", "1", "--out",
                 str(tmp_path / "t.npz")]) == 0  # fmt: skip
    assert str(np.load(tmp_path / "t.npz")["extractor"]) == "effnet-lite0"
    from PIL import Image

    for k, (image, label) in enumerate(zip(images[few][:12], labels[few][:12], strict=True)):
        (tmp_path / "classes" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(tmp_path / "classes" / f"c{label}" / f"{k}.png")
    assert main(["eval", "--make-ref", str(tmp_path / "classes"), "--size", "16", "--channels",
                 "1", "--out", str(tmp_path / "f.npz")]) == 0  # fmt: skip
    assert str(np.load(tmp_path / "f.npz")["extractor"]) == "effnet-lite0"
    for name, arrays in (("ten", {"labels": labels[:20]}), ("none", {})):
        npz = tmp_path / f"{name}.npz"
        np.savez(npz, arr_0=images[:20].transpose(0, 2, 3, 1), **arrays)
        assert main(["eval", "--images", str(npz), "--metrics", "is", "--out",
                     str(tmp_path / f"{name}.json")]) == 0  # fmt: skip
        assert _extractor_of(tmp_path / f"{name}.json") == "fmnist-cnn", name


# ------------------------------------------------------------------ 4: the counts' device


def test_class_accuracy_counts_go_where_the_backend_takes_them(tmp_path, monkeypatch):
    """NCCL takes CUDA tensors only: the counts (kept on the CPU) are summed on the current CUDA
    device under NCCL, on the CPU under gloo (and under a mixed backend, whose CPU tensors go
    to gloo); a real one-process gloo group sums them."""
    import torch.distributed as dist

    from pixeljit.metrics import labelled
    from pixeljit.metrics.labelled import AccuracyCounter, collective_device

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        assert collective_device() == torch.device("cpu")
        counter = AccuracyCounter(create_extractor("fmnist-cnn"))
        counter.counts += torch.tensor([3.0, 4.0])
        assert counter.accuracy() == 0.75
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
        for backend, device in (("nccl", "cuda:3"), ("NCCL", "cuda:3"),
                                ("cpu:gloo,cuda:nccl", "cpu"), ("gloo", "cpu")):  # fmt: skip
            monkeypatch.setattr(labelled.torch.distributed, "get_backend",
                                lambda group=None, b=backend: b)  # fmt: skip
            assert collective_device() == torch.device(device), backend
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for NCCL")
def test_class_accuracy_under_an_nccl_group(tmp_path):
    """all_reduce of the CPU counts raised under NCCL ('No backend type associated with device
    type cpu'); a one-process NCCL group now sums them."""
    import torch.distributed as dist

    from pixeljit.metrics.labelled import AccuracyCounter

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        counter = AccuracyCounter(create_extractor("fmnist-cnn", device="cuda"))
        counter.counts += torch.tensor([3.0, 4.0])
        assert counter.accuracy() == 0.75
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------ 5: generation flags set to zero


ZEROS = [["--num", "0"], ["--seed", "0"], ["--cfg", "0"], ["--in-context-start", "0"],
         ["--steps", "0"], ["--shift", "0"], ["--t-eps", "0"], ["--batch-size", "0"]]  # fmt: skip


@pytest.mark.parametrize("flag", ZEROS, ids=lambda f: f[0])
def test_generation_flags_set_to_zero_are_refused_with_images_and_make_ref(tmp_path, capsys, flag):
    """0 == False: --seed 0, --cfg 0, --in-context-start 0 ran silently with --images while
    --seed 1 was refused, and --num 0 said '--num-images must be ≥ 1'."""
    images = ["eval", "--images", str(tmp_path / "x.npz"), "--ref", str(tmp_path / "r.npz")]
    make_ref = ["eval", "--make-ref", "fashion-mnist", "--size", "8", "--channels", "1",
                "--out", str(tmp_path / "s.npz")]  # fmt: skip
    named = {"--num": "--num-images"}.get(flag[0], flag[0])
    for argv, mode in ((images, "--images"), (make_ref, "--make-ref")):
        err = _error(capsys, [*argv, *flag])
        assert f"{named} has no effect with {mode}" in err and f"drop {named}" in err, err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ 6: KID's subset size


def test_kid_reports_its_subset_size_and_no_spread_over_identical_subsets(real, tmp_path, capsys):
    """100 images against 100 reference features: every subset of 1000 was all of both sets,
    KID_std about 1e-16, and nothing said so. The size used is reported (JSON and the printed
    line) and KID_std is left out with a warning; against 200 features the subsets differ and
    KID_std is kept."""
    images, _ = real
    cnn = create_extractor("fmnist-cnn")
    cfg = ScoreConfig(kid=KIDConfig(num_subsets=5))
    fake = cnn.features(torch.from_numpy(images[:100]))
    for count, same in ((100, True), (200, False)):
        ref = compute_dataset_stats(torch.from_numpy(images[100 : 100 + count]), cnn)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = score_images(torch.from_numpy(images[:100]), cnn, ref, ("kid",), cfg)
        said = [str(w.message) for w in caught if "KID_std left out" in str(w.message)]
        assert scores.kid_subset_size == min(1000, 100, count) == 100
        kid, std = kernel_inception_distance(fake, torch.from_numpy(ref.features), cfg.kid)
        assert scores.kid == pytest.approx(kid, rel=1e-6)
        assert (scores.kid_std is None, len(said)) == ((True, 1) if same else (False, 0))
        if not same:
            assert scores.kid_std == pytest.approx(std, rel=1e-6) and std > 1e-6
    npz, stats = tmp_path / "x.npz", tmp_path / "r.npz"
    np.savez(npz, arr_0=images[:100].transpose(0, 2, 3, 1))
    save_dataset_stats(stats, compute_dataset_stats(torch.from_numpy(images[100:300]), cnn))
    capsys.readouterr()
    assert main(["eval", "--images", str(npz), "--ref", str(stats), "--metrics", "kid", "--out",
                 str(tmp_path / "k.json")]) == 0  # fmt: skip
    assert re.search(r"KID_subset_size: 100\n", capsys.readouterr().out)
    scores = json.loads((tmp_path / "k.json").read_text())["scores"]
    assert scores["KID_subset_size"] == 100 and scores["KID_std"] > 0


# ------------------------------------------------------------------ 7: messages and their fixes


def test_the_fixes_messages_give_work(real, fmnist16, tmp_path, capsys):
    """KID against mu/sigma-only statistics suggested `--make-ref DATASET --out STATS.npz`,
    which fails without --size / --channels; an images .npz as --ref said 'not a statistics
    file' only; statistics of another feature size did not name the extractor they record.
    Each message now gives a command that works, or names the extractor."""
    images, _ = real
    npz = tmp_path / "x.npz"
    np.savez(npz, arr_0=images[:40].transpose(0, 2, 3, 1))
    cnn = create_extractor("fmnist-cnn")
    full = compute_dataset_stats(torch.from_numpy(images[100:200]), cnn)
    bare = tmp_path / "bare.npz"
    save_dataset_stats(bare, DatasetStats(full.mu, full.sigma, full.count, full.extractor,
                                          image_shape=full.image_shape))  # fmt: skip
    err = _error(capsys, ["eval", "--images", str(npz), "--ref", str(bare), "--metrics", "kid"])
    command = re.search(r"`pixeljit eval (--make-ref DATASET [^`]*)`", err).group(1).split()
    made = tmp_path / "made.npz"
    argv = [w.replace("DATASET", str(fmnist16(300))).replace("STATS.npz", str(made))
            for w in command]  # fmt: skip
    assert main(["eval", *argv]) == 0
    assert main(["eval", "--images", str(npz), "--ref", str(made), "--metrics", "kid"]) == 0
    capsys.readouterr()
    err = _error(capsys, ["eval", "--images", str(npz), "--ref", str(npz), "--metrics", "fd"])
    assert "holds images (arr_0), not statistics" in err
    command = re.search(r"`pixeljit eval (--make-ref [^`]*)`", err).group(1).split()
    made = tmp_path / "from-images.npz"
    assert main(["eval", *[w.replace("STATS.npz", str(made)) for w in command]]) == 0
    assert main(["eval", "--images", str(npz), "--ref", str(made), "--metrics", "fd"]) == 0
    capsys.readouterr()
    err = _error(capsys, ["eval", "--images", str(npz), "--ref", str(made), "--metrics", "fd",
                          "--extractor", "effnet-lite0"])  # fmt: skip
    assert "made with extractor 'fmnist-cnn'" in err and "--extractor fmnist-cnn" in err
    effnet = create_extractor("effnet-lite0")
    with pytest.raises(ValueError, match="made with extractor 'fmnist-cnn'.*score with fmnist"):
        score_images(torch.from_numpy(images[:20]), effnet, full, ("fd",))


def test_reading_statistics_names_the_fix_from_python_too(tmp_path):
    """`load_dataset_stats` itself (not only the command line) says an images .npz is images
    and names the extractor recorded statistics of another feature size need."""
    from pixeljit.metrics import load_dataset_stats

    images = tmp_path / "images.npz"
    np.savez(images, arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"It holds images \(arr_0\): `pixeljit eval --make-ref "
                       r"FILE --size S --channels C --out STATS.npz`"):  # fmt: skip
        load_dataset_stats(images)
    stats = tmp_path / "effnet.npz"
    save_dataset_stats(stats, DatasetStats(np.zeros(4), np.eye(4), 10, "effnet-lite0@bicubic"))
    classifier = create_extractor("fmnist-cnn")
    with pytest.raises(ValueError, match=r"4-d statistics but extractor 'fmnist-cnn' gives \d+-d "
                       r"features: score with the extractor they were computed with, "
                       r"effnet-lite0 \(--extractor effnet-lite0\)"):  # fmt: skip
        load_dataset_stats(stats, classifier)
    stats_obj = DatasetStats(np.zeros(4), np.eye(4), 10, "effnet-lite0@bicubic")
    with pytest.raises(ValueError, match="computed with, effnet-lite0"):
        stats_obj.check_extractor(classifier)


def test_samples_of_a_few_fashion_mnist_classes_count_its_ten(tmp_path):
    """`sample --labels 0 1 2 --out DIR/` of a Fashion-MNIST model: its labels.csv names three
    of Fashion-MNIST's classes; `auto` must score them as the model's own images (fmnist-cnn,
    10 classes), not as a 3-class set (effnet-lite0, and its reference measured again)."""
    from PIL import Image

    from pixeljit.metrics.labelled import source_classes

    folder = tmp_path / "few"
    folder.mkdir()
    rows = ["file,label,class"]
    for k, (label, name) in enumerate([(0, "T-shirt/top"), (1, "Trouser"), (2, "Pullover")]):
        Image.new("L", (8, 8), 40 * k).save(folder / f"{k:06d}.png")
        rows.append(f"{k:06d}.png,{label},{name}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert source_classes(folder) == 10
    rows[1] = "000000.png,0,Tulip"  # a set of other classes keeps its own count
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert source_classes(folder) == 3
