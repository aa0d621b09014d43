"""Class accuracy of class-conditional images: a classifier's verdict on each image against
the class it was meant to show, with the images' labels matched to the classifier's classes by
name where both sides name them."""

from __future__ import annotations

import torch

from pixeljit.metrics.extractor import FeatureExtractor


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
        counts = self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        return float(counts[0] / counts[1])
