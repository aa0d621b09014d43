"""Names the OS accepts that UTF-8 text cannot hold.

On Linux a file name is bytes. Python holds the bytes of a name that is not valid UTF-8 as lone
surrogates (b"caf\\xe9" is "caf\\udce9", `os.fsdecode`), which UTF-8 text cannot encode: a
manifest's JSON, a folder name made from it, a message printed under a strict locale. Such a
name is hashed as its bytes (`os.fsencode`) and written as these helpers spell it.
"""

from __future__ import annotations

SURROGATES = ("\ud800", "\udfff")  # the range `os.fsdecode` holds undecodable bytes in


def utf8_text(text: str) -> str:
    """`text` as UTF-8 can hold it: bytes that are not valid UTF-8 (held as surrogate escapes)
    are written as `\\xNN` escapes; valid text is returned as it is."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name's bytes make
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def file_name_text(name: str) -> str:
    """`name` usable inside a file name written as UTF-8 text: each byte that is not valid UTF-8
    (a surrogate escape) becomes "_"; valid names are returned as they are."""
    low, high = SURROGATES
    return "".join("_" if low <= c <= high else c for c in name)
