"""Is an image file whole? Checks of NIfTI and NRRD files made before any reader sees them.

SimpleITK reads a truncated ``.nii``/``.nii.gz`` without an error (the missing voxels become 0)
and turns NaN/Inf stored in a float NIfTI into 0. So, before reading, this module streams the
file's voxel data once (4 MiB at a time, never the whole file in memory) and checks that:

- a gzip stream (``.nii.gz``, NRRD ``encoding: gzip``) decompresses completely and its CRC
  matches (one flipped byte is caught here);
- the file holds as many bytes of voxel data as its header announces (size x type);
- float voxel data (NIfTI float32/float64) holds no NaN or infinite value: such a file is
  refused, since the reader would silently replace them by 0 (a plausible HU value).

Checked formats: NIfTI-1 and NIfTI-2 (``.nii``, ``.nii.gz``) and NRRD with attached data
(``.nrrd``, encodings raw and gzip). Other files (MHA, detached NRRD headers, bzip2 or text
encodings, DICOM) are left to the reader, which raises on truncated data; for them NaN/Inf are
caught after reading (``imaging.volumes.read_volume`` checks the array).
No file is modified.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["CorruptImageError", "check_image_file", "count_nonfinite", "nonfinite_error", "DataLayout"]

_CHUNK = 4 << 20
# NIfTI datatype code -> numpy type (the float ones are scanned for NaN/Inf)
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8", 32: "c8", 1792: "c16", 128: "u1", 2304: "u1"}
_NIFTI_MAGIC = {struct.pack(e + "i", n) for e in "<>" for n in (348, 540)}  # sizeof_hdr, NIfTI-1 and -2
_NRRD_TYPES = {"u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
               "i1": ("signed char", "int8", "int8_t"),
               "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
               "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               "i4": ("int", "signed int", "int32", "int32_t"),
               "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
               "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int",
                      "int64", "int64_t"),
               "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
               "f4": ("float",), "f8": ("double",)}
_NRRD_TYPE = {name: code for code, names in _NRRD_TYPES.items() for name in names}


class CorruptImageError(ValueError):
    """An image file that is truncated, damaged or holds values the reader would hide (NaN/Inf)."""


@dataclass(frozen=True)
class DataLayout:
    """Where a file's voxel data is and what it is.

    Attributes:
        shape: Sizes per axis as the header lists them (fastest first, e.g. (I, J, K)).
        dtype: numpy dtype of one voxel (with its byte order).
        offset: Bytes before the voxel data in the (decompressed) stream.
        gzip: Whether the whole file (NIfTI) or the data after the header (NRRD) is a gzip stream.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    gzip: bool

    @property
    def nbytes(self) -> int:
        """Bytes of voxel data the header announces."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def describe(self) -> str:
        """e.g. "6 x 5 x 4 int16 = 240 bytes"."""
        return f"{' x '.join(map(str, self.shape))} {self.dtype.name} = {self.nbytes} bytes"


def _nifti_layout(header: bytes, compressed: bool) -> DataLayout | None:
    """The layout a NIfTI-1/2 header describes, or None when the bytes are no NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            datatype, _bitpix = struct.unpack(endian + "hh", header[70:74])
            ndim, *dims = struct.unpack(endian + "8h", header[40:56])
            offset, minimum = struct.unpack(endian + "f", header[108:112])[0], 352
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, _bitpix = struct.unpack(endian + "hh", header[12:16])
            ndim, *dims = struct.unpack(endian + "8q", header[16:80])
            offset, minimum = struct.unpack(endian + "q", header[168:176])[0], 544
            break
    else:
        return None
    if datatype not in _NIFTI_TYPES or not 1 <= ndim <= 7:
        return None  # let the reader say what is wrong
    dtype = np.dtype(_NIFTI_TYPES[datatype]).newbyteorder(endian)
    return DataLayout(tuple(max(int(d), 1) for d in dims[:ndim]), dtype, max(int(offset), minimum), compressed)


def _nrrd_layout(handle: BinaryIO, path: Path) -> DataLayout | None:
    """The layout of an NRRD file with attached raw or gzip data (handle left at the data), else None."""
    if not handle.read(8).startswith(b"NRRD000"):
        return None
    handle.readline()
    fields: dict[str, str] = {}
    for _ in range(1000):
        line = handle.readline()
        if not line or not line.strip():
            break
        text = line.decode("latin-1").strip()
        if text.startswith("#") or ":" not in text or ":=" in text:
            continue
        key, value = text.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    if any(k in fields for k in ("data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip")):
        return None  # detached or skipped data: left to the reader
    encoding = fields.get("encoding", "").lower()
    kind = _NRRD_TYPE.get(fields.get("type", "").lower())
    if encoding not in ("raw", "gzip", "gz") or kind is None or "sizes" not in fields:
        return None
    try:
        shape = tuple(int(v) for v in fields["sizes"].split())
    except ValueError as error:
        raise CorruptImageError(f"{path}: NRRD header field 'sizes: {fields['sizes']}' is not a list of integers") \
            from error
    endian = ">" if fields.get("endian", "little").lower() == "big" else "<"
    return DataLayout(shape, np.dtype(kind).newbyteorder(endian), 0, encoding != "raw")


def _gunzip(handle: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (several members allowed); raises on damage."""
    with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
        yield from iter(lambda: stream.read(_CHUNK), b"")


def _voxel_bytes(chunks: Iterator[bytes], layout: DataLayout) -> Iterator[bytes]:
    """The first ``layout.nbytes`` bytes after ``layout.offset`` of a byte stream (fewer if it ends early)."""
    skip, left = layout.offset, layout.nbytes
    for chunk in chunks:
        if skip:
            chunk, skip = chunk[skip:], max(skip - len(chunk), 0)
        if chunk and left > 0:
            yield chunk[:left]
            left -= min(len(chunk), left)
    # the stream is read to its end (a gzip CRC is checked only there)


def count_nonfinite(chunks: Iterator[bytes], dtype: np.dtype) -> tuple[int, int]:
    """Count voxels and NaN/Inf values in a stream of raw voxel bytes.

    Args:
        chunks: The voxel data in pieces of any length.
        dtype: One voxel's dtype (with byte order); NaN/Inf are counted for float dtypes only.

    Returns:
        (bytes seen, NaN or infinite voxels).
    """
    seen, bad, rest = 0, 0, b""
    scan = dtype.kind == "f"
    for chunk in chunks:
        seen += len(chunk)
        if scan:
            data = rest + chunk
            whole = len(data) - len(data) % dtype.itemsize
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:whole], dtype=dtype))))
            rest = data[whole:]
    return seen, bad


def _stream(layout: DataLayout, handle: BinaryIO) -> Iterator[bytes]:
    """The file's (decompressed) bytes from the handle's position, in chunks."""
    if layout.gzip:
        return _gunzip(handle)
    return iter(lambda: handle.read(_CHUNK), b"")


def _layout(path: Path, handle: BinaryIO) -> DataLayout | None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        compressed = handle.read(2) == b"\x1f\x8b"  # gzip magic, whatever the name says
        handle.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                header = stream.read(544)
        else:
            header = handle.read(544)
        handle.seek(0)
        if len(header) < 348:
            if header[:4] not in _NIFTI_MAGIC:
                return None  # no NIfTI at all: the reader says so
            raise CorruptImageError(f"{path} is truncated: {len(header)} bytes, too short for a NIfTI header "
                                    f"(348 bytes)")
        return _nifti_layout(header, compressed)
    if name.endswith(".nrrd"):
        return _nrrd_layout(handle, path)
    return None


def check_image_file(path: str | os.PathLike) -> None:
    """Refuse a NIfTI or NRRD file that is truncated, damaged or holds NaN/Inf (see the module docstring).

    Other formats pass unchecked (their reader raises on truncated data).

    Args:
        path: The image file (read only).

    Raises:
        CorruptImageError: Naming the file and what is wrong: a damaged gzip stream (bad CRC or data),
            fewer voxel bytes than the header announces, or NaN/infinite float voxels.
        OSError: If the file cannot be opened.
    """
    path = Path(path)
    with path.open("rb") as handle:
        try:
            layout = _layout(path, handle)
            if layout is None:
                return
            seen, nonfinite = count_nonfinite(_voxel_bytes(_stream(layout, handle), layout), layout.dtype)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            cause = "it ends before its gzip stream does" if isinstance(error, EOFError) else str(error)
            raise CorruptImageError(f"{path} is corrupt (truncated or damaged): its compressed data cannot be read "
                                    f"completely ({cause}); SegHiResCAM refuses it rather than read part of it "
                                    f"as zeros") from error
    if seen < layout.nbytes:
        raise CorruptImageError(f"{path} is truncated: it holds {seen} of the {layout.nbytes} bytes of voxel data "
                                f"its header announces ({layout.describe()}); SegHiResCAM refuses it rather than "
                                f"read the missing voxels as zeros")
    if nonfinite:
        raise nonfinite_error(path, nonfinite, layout.dtype)


def nonfinite_error(path: Path, count: int, dtype: np.dtype) -> CorruptImageError:
    """The error for a file with ``count`` NaN/infinite voxels of float ``dtype`` (one wording everywhere)."""
    return CorruptImageError(f"{path} holds {count} NaN or infinite voxel value(s) ({np.dtype(dtype).name} data); "
                             f"SegHiResCAM refuses it rather than explain them (a NIfTI reader would silently turn "
                             f"them into 0): replace them (e.g. with the background value) and try again")
