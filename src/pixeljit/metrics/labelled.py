"""Class accuracy of class-conditional images: a classifier's verdict on each image against
the class it was meant to show, with the images' labels matched to the classifier's classes by
name where both sides name them."""

from __future__ import annotations

import os
import warnings

import torch

from pixeljit.metrics.extractor import FeatureExtractor
from pixeljit.metrics.image_sources import folder_labels, npz_class_names, npz_labels


def _name_key(name: str) -> str:
    """A class name compared by its letters and digits only: 'Ankle_boot' is 'Ankle boot'."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def label_order(label_names, extractor: FeatureExtractor) -> torch.Tensor | str | None:
    """How labels named `label_names` map onto the classifier's classes: None (take them as
    they are: the same names in the same order, or names unknown on either side), a tensor
    taking label k to the classifier's class of the same name (an image folder sorts its
    classes alphabetically: Fashion-MNIST's as folders number them in another order), or why
    class accuracy would mean nothing (classes the classifier does not know)."""
    known = extractor.class_names
    if not label_names or not known:
        return None
    if isinstance(label_names, dict):  # {label: name} for some labels (a folder's labels.csv)
        return _named_label_order(label_names, extractor)
    ours, theirs = [_name_key(n) for n in label_names], [_name_key(n) for n in known]
    if ours == theirs:
        return None
    if sorted(ours) != sorted(theirs) or len(set(theirs)) != len(theirs):
        return (
            f"class accuracy left out: the labels name {', '.join(label_names[:4])}, … but "
            f"the {extractor.name} classifier knows {', '.join(known[:4])}, …"
        )
    return torch.tensor([theirs.index(k) for k in ours])


def _named_label_order(names: dict[int, str], extractor: FeatureExtractor) -> torch.Tensor | str:
    """label_order for labels only some of which are named: each named one goes to the
    classifier's class of that name, an unnamed one stays as it is."""
    theirs = [_name_key(n) for n in extractor.class_names]
    unknown = [name for name in names.values() if _name_key(name) not in theirs]
    if unknown:
        return (f"class accuracy left out: the labels name {', '.join(unknown[:4])}, which the "
                f"{extractor.name} classifier does not know")  # fmt: skip
    order = torch.arange(max(len(theirs), max(names) + 1))
    for label, name in names.items():
        order[label] = theirs.index(_name_key(name))
    return order


def source_labels(images) -> tuple[object, list[str] | dict[int, str] | None]:
    """The labels an `.npz` or a folder's labels.csv gives its images, and their names (the
    `.npz`'s class_names list, the csv's {label: name}); (None, None) without any. A labels.csv
    that cannot be used is said, with the class accuracy left out."""
    if not isinstance(images, (str, os.PathLike)):
        return None, None
    try:
        found = folder_labels(images)
    except ValueError as err:
        warnings.warn(f"class accuracy left out: {err}", stacklevel=3)
        return None, None
    if found is not None:
        return found
    return npz_labels(images), npz_class_names(images)


def label_classes(labels, names=None) -> int:
    """How many classes a labelled image set's labels come from: one more than its largest
    label, or more where its names say so (the length of an `.npz`'s 'class_names' list, the
    largest label a labels.csv names); 0 without labels. A set whose images lack the last
    classes (and does not name them) counts fewer."""
    if labels is None:
        return 0
    count = int(labels.max()) + 1 if len(labels) else 0
    if isinstance(names, dict) and names:
        count = max(count, max(names) + 1)
    elif names:
        count = max(count, len(names))
    return count


def source_classes(images) -> int:
    """`label_classes` of an image folder's labels.csv or an `.npz`'s labels (0: unlabelled, or
    a labels.csv that cannot be used, which scoring then warns of). A set whose class names are
    all Fashion-MNIST's counts its 10 classes (a 10-class model's samples of a few classes)."""
    from pixeljit.data.fashion_mnist import CLASS_NAMES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels, names = source_labels(images)
    given = list(names.values()) if isinstance(names, dict) else list(names or [])
    fashion = {_name_key(n) for n in CLASS_NAMES}
    if labels is not None and given and all(_name_key(str(n)) in fashion for n in given):
        return len(CLASS_NAMES)
    return label_classes(labels, names)


def not_classifier_labels(images, labels, names, extractor: FeatureExtractor) -> str | None:
    """Why the labels of `images` are not in the classifier's label space (None: they may be):
    labels past its classes, or, unless both sides name their classes (then `label_order`
    matches them by name, or says why not), another class count than its own (Fashion-MNIST's
    10 are not ImageNet's 1000)."""
    classes = extractor.num_classes
    if len(labels) and labels.max() >= classes:
        return (f"{images} holds labels up to {int(labels.max())}, but the {extractor.name} "
                f"classifier knows {classes} classes")  # fmt: skip
    if names and extractor.class_names:
        return None
    count = label_classes(labels, names)
    if count != classes:
        return (f"the labels of {images} are of {count} classes, but the {extractor.name} "
                f"classifier's {classes} classes are another label space (class accuracy "
                "needs a classifier of the images' own classes; the other metrics are "
                "scored)")  # fmt: skip
    return None


class AccuracyCounter(FeatureExtractor):
    """Wraps an extractor with a classifier head: as generated batches stream through it,
    counts how many images it assigns to their intended class (class-conditional accuracy).
    Batches must arrive in the order their labels were queued (score_images keeps it)."""

    def __init__(self, inner: FeatureExtractor):
        self.inner = inner
        self.name, self.revision = inner.name, inner.revision
        self.fd_label, self.dim = inner.fd_label, inner.dim
        self.num_classes, self.device = inner.num_classes, inner.device
        self.queue: list[torch.Tensor] = []
        self.counts = torch.zeros(2, dtype=torch.float64)  # (hits, seen)

    def images(self, batches):
        """Pass images on, queueing their labels."""
        for u8, labels in batches:
            self.queue.append(labels)
            yield u8

    def extract(self, images: torch.Tensor):
        out = self.inner.extract(images)
        labels = self.queue.pop(0)
        pred = out.logits.argmax(dim=1).cpu()  # (B,)
        self.counts += torch.tensor([float((pred == labels).sum()), float(len(labels))])
        return out

    def accuracy(self) -> float:
        """Hits / images over every rank (the counts summed where the process group's backend
        takes tensors: NCCL refuses the CPU ones they are kept in)."""
        counts = self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.to(collective_device())
            torch.distributed.all_reduce(counts)
        return float(counts[0] / counts[1])


def collective_device(group=None) -> torch.device:
    """Where a tensor must be for a collective on `group` (the default one if None): the
    current CUDA device when the backend is NCCL, which takes CUDA tensors only, else the CPU
    (gloo; a "cpu:gloo,cuda:nccl" backend sends CPU tensors to gloo)."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend and "cpu:" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
