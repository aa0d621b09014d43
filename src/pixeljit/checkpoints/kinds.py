"""What a checkpoint path is, by its files' first bytes, names and a folder's marker files: the
kinds `load_trained` tells apart (`checkpoint_kind`), and the messages that name a file of one
format handed to the reader of another (`check_format_matches_suffix`, `refuse_as_safetensors`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pixeljit.checkpoints.authors import CHECKPOINT_FILENAME, SAFETENSORS_SUFFIX
from pixeljit.checkpoints.hub_remote import HF_SCHEME, is_hf_uri
from pixeljit.checkpoints.run import LATEST
from pixeljit.checkpoints.weights import refuse_special_file

HUB_CONFIG = "config.json"  # marks a Hugging Face layout folder (see checkpoints.hub)
FOLDER_MARKS = (CHECKPOINT_FILENAME, LATEST, HUB_CONFIG)  # the files `folder_kind` goes by
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a .pt / .pth)
PICKLE_PROTOCOLS = range(2, 6)  # a pickle opens with 0x80 and its protocol (torch's legacy format)
# what `folder_kind` finds, as messages name it
FOLDER_KINDS = {"authors": f"an authors' checkpoint folder ({CHECKPOINT_FILENAME})",
                "run": f"a pixeljit training run folder ({LATEST})",
                "hub": f"a Hugging Face layout folder ({HUB_CONFIG})"}  # fmt: skip
# a torch.save file by its suffix, as `checkpoint_kind` reads it
TORCH_FILE_KINDS = {".pth": "an authors' checkpoint", ".pt": "a pixeljit training checkpoint"}


def sniffed_format(path: Path) -> str | None:
    """'zip' (torch.save), 'pickle' (a legacy torch.save or pickle.dump) or 'safetensors' (an
    8-byte header length, then a JSON '{'), from the first bytes; None for anything else."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 2**32:
        return "safetensors"
    return None


def check_format_matches_suffix(path: Path) -> None:
    """A .safetensors named .pt, or a torch.save file named .safetensors, failed deep in the
    wrong reader ('not a zip-format PyTorch checkpoint', 'header too large')."""
    suffix, found = path.suffix.lower(), sniffed_format(path)
    if found == "safetensors" and suffix in (".pt", ".pth"):
        raise ValueError(f"{path} is a .safetensors file named {suffix}: rename it to "
                         f"{path.with_suffix(SAFETENSORS_SUFFIX).name} and pass that")  # fmt: skip
    if found == "zip" and suffix == SAFETENSORS_SUFFIX:
        pt, pth = path.with_suffix(".pt").name, path.with_suffix(".pth").name
        raise ValueError(f"{path} is a PyTorch checkpoint (torch.save) named .safetensors: "
                         f"rename it to {pt} (a run's checkpoint) or {pth} (an authors' one) "
                         "and pass that")  # fmt: skip


def refuse_as_safetensors(path: Path) -> None:
    """`load_safetensors` reads one .safetensors file: a folder, a torch.save checkpoint or a
    pickle is named as what it is, with the loader that reads it (a folder was said not to
    exist, a checkpoint to have a 'header too large')."""
    load = f"pixeljit.load_trained({str(path)!r})"
    if path.is_dir():
        kind = FOLDER_KINDS.get(folder_kind(path))
        held = sorted(p.name for p in path.glob(f"*{SAFETENSORS_SUFFIX}") if p.is_file())
        if kind:
            fix = f"load it with {load}"
        elif held:
            fix = f"pass the file itself ({path / held[0]})"
        else:
            fix = f"pass a NAME{SAFETENSORS_SUFFIX} file"
        raise ValueError(f"{path} is {kind or 'a folder'}, not a {SAFETENSORS_SUFFIX} file "
                         f"(load_safetensors reads one such file): {fix}")  # fmt: skip
    found, suffix = sniffed_format(path), path.suffix.lower()
    if found == "zip":
        kind = TORCH_FILE_KINDS.get(suffix)
        fix = (f"load it with {load}" if kind else "rename it to NAME.pt (a pixeljit run's) "
               "or NAME.pth (an authors') and load it with pixeljit.load_trained")  # fmt: skip
        raise ValueError(f"{path} is {kind or 'a PyTorch checkpoint'} (torch.save), not a "
                         f"{SAFETENSORS_SUFFIX} file: {fix}")  # fmt: skip
    if found == "pickle":
        raise ValueError(
            f"{path} is a Python pickle (the legacy torch.save format), not a "
            f"{SAFETENSORS_SUFFIX} file; pixeljit reads no pickles (unpickling runs code): save "
            "the weights again with pixeljit.save_safetensors or a current torch.save"
        )


def folder_kind(path: Path) -> str | None:
    """What loading the folder `path` reads, by the files that mark it, in this order: an
    authors' checkpoint ('authors'), a pixeljit run ('run'), a Hugging Face layout folder
    ('hub'); None for none of them."""
    if (path / CHECKPOINT_FILENAME).is_file():
        return "authors"
    if (path / LATEST).is_file() or any(path.glob("step-*.pt")):
        return "run"
    if (path / HUB_CONFIG).is_file():
        return "hub"
    return None


def checkpoint_kind(source: str | os.PathLike) -> str:
    """'run' (pixeljit training), 'safetensors', 'hub' (a Hugging Face layout folder or an
    `hf://` name), or 'authors'."""
    if is_hf_uri(source):
        return "hub"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # a pipe, socket or device (here or as a folder's marker) is refused before it is opened
    for file in (path, *(path / name for name in FOLDER_MARKS if path.is_dir())):
        refuse_special_file(file)
    suffix = path.suffix.lower()  # X.SAFETENSORS is the same kind of file
    if path.is_file():
        check_format_matches_suffix(path)
    if suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    if path.is_dir():
        from pixeljit.checkpoints.hub_write import finish_interrupted_export  # imports this

        finish_interrupted_export(path)  # an export killed midway: its config.json comes last
        kind = folder_kind(path)
        if kind is not None:
            return kind
        for name in (LATEST, CHECKPOINT_FILENAME):  # the name, but not a file
            if (path / name).exists() and not (path / name).is_file():
                raise ValueError(f"{path / name} is a folder, not a checkpoint file: pass the "
                                 "checkpoint file itself")  # fmt: skip
        weights = sorted(p.name for p in path.glob("*.safetensors") if p.is_file())
        if weights:  # a hub folder that lost its config.json, or a folder of exports
            raise FileNotFoundError(
                f"{path} holds {weights[0]} but no {HUB_CONFIG} beside it, so it is no Hugging "
                f"Face layout folder: pass the file itself ({path / weights[0]}), or write the "
                f"folder again with `pixeljit convert SRC --hub {path} --overwrite`"
            )
        raise FileNotFoundError(
            f"{path} holds neither a pixeljit run ({LATEST}), a Hugging Face layout folder "
            f"({HUB_CONFIG}, from `pixeljit convert --hub`) nor an authors' {CHECKPOINT_FILENAME}"
        )
    if suffix == ".pth":
        return "authors"
    if suffix == ".pt":
        return "run"
    raise ValueError(
        f"cannot load {path}: expected a pixeljit run folder or .pt checkpoint, a .safetensors "
        f"export, a Hugging Face layout folder or {HF_SCHEME}org/name, or an authors' "
        f"{CHECKPOINT_FILENAME} (or its folder)"
    )
