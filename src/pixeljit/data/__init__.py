"""Data: sources (Fashion-MNIST, Noto emoji, image folders), the ADM crop, packed shards and
the device loader. Flow: source -> `prepare` -> packed set on disk -> `PackedDataset` ->
`DeviceLoader` -> (x in [-1, 1], y int64) on the training device. `outdir` guards the output
folder, `manifest` reads manifests without trusting them, `fingerprint` keys the cache
(`open`) to the source's content."""

from pixeljit.files.idx import read_idx, write_idx

from .emoji import emoji_stream, find_emoji_font, load_emoji
from .fashion_mnist import (
    CLASS_NAMES as FASHION_MNIST_CLASSES,
)
from .fashion_mnist import (
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
)
from .folders import decode_image, scan_image_folder
from .loader import DeviceLoader, epoch_order
from .packed import ArrayDataset, PackedDataset
from .prepare import PrepareResult, pack_arrays, prepare, write_stream
from .source import BadImage, BadImageError
from .transforms import adm_center_crop, image_to_chw, to_channels

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ArrayDataset",
    "BadImage",
    "BadImageError",
    "DeviceLoader",
    "PackedDataset",
    "PrepareResult",
    "adm_center_crop",
    "decode_image",
    "download_fashion_mnist",
    "emoji_stream",
    "epoch_order",
    "find_emoji_font",
    "find_fashion_mnist",
    "image_to_chw",
    "load_emoji",
    "load_fashion_mnist",
    "pack_arrays",
    "prepare",
    "read_idx",
    "scan_image_folder",
    "to_channels",
    "write_idx",
    "write_stream",
]
