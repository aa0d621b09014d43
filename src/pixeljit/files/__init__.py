"""Bytes on disk, shared by every package: atomic writes (`atomic`), the cache root (`cache`), IDX
files (`idx`), what kind of file a path is (`kinds`: pipes are never opened) and image files
written at the edges: uint8, grids, PNG and npz (`images`)."""

GIB = 2**30  # bytes in the GiB every memory and disk message counts in
