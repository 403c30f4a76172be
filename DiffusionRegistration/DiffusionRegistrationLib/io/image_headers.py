"""Checks of an image file against its own header, before ITK reads it.

ITK zero-fills NIfTI data that is shorter than the header says, replaces NaN in NIfTI by 0, turns a
zero NIfTI spacing into 1 mm and allocates whatever the header claims. So NIfTI (.nii, .nii.gz,
.hdr/.img), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) headers are parsed here: the memory the
image needs is estimated from the header, the data is counted (decompressed when compressed) and
scanned for NaN/Inf, and the header's spacing is checked. Other formats pass unchanged.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import RegistrationError

CHUNK = 1 << 22
WORKING_COPIES = 3  # float32 bytes per voxel held at once beside the file's own buffer (array, normalised, pyramid)


@dataclass(frozen=True)
class Layout:
    """Where an image file's voxel data lies and what the header promises about it."""

    data_path: Path
    offset: int  # -1: the data is the last `size` bytes of the file
    size: tuple[int, ...]
    dtype: np.dtype  # one scalar component, with byte order
    components: int
    compression: Optional[str]  # None; "gzip": the whole file (offset inside); "gzip@", "zlib": a stream at offset
    spacing: tuple[float, ...]

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.components * self.dtype.itemsize


_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8", 128: "u1", 2304: "u1", 32: "f4", 1792: "f8"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4, 32: 2, 1792: 2}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ending in (".nii.gz", ".nii", ".hdr", ".img", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.endswith(ending):
            return ending
    return ""


def _opener(path: Path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open if magic == b"\x1f\x8b" else open


def nifti_version(path: Path) -> Optional[int]:
    """1 or 2 for a NIfTI file (its first field, the header size, in either byte order), else None."""
    if _suffix(path) not in (".nii", ".nii.gz", ".hdr"):
        return None
    try:
        with _opener(path)(path, "rb") as handle:
            head = handle.read(4)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
        return None
    sizes = {struct.unpack(order + "i", head)[0] for order in "<>"} if len(head) == 4 else set()
    return 2 if 540 in sizes else 1 if 348 in sizes else None


def _nifti(path: Path, role: str) -> Layout:
    with _opener(path)(path, "rb") as handle:
        head = handle.read(540)
    for order in "<>":
        if len(head) >= 4 and struct.unpack(order + "i", head[:4])[0] in (348, 540):
            break
    else:
        raise RegistrationError(f"{role} {path}: cannot be read as NIfTI (bad header size); the file is damaged or "
                                "has the wrong suffix.")
    two = struct.unpack(order + "i", head[:4])[0] == 540
    needed = 540 if two else 348
    if len(head) < needed:
        raise RegistrationError(f"{role} {path}: the NIfTI header is cut short ({len(head)} of {needed} bytes); "
                                "the file is truncated. Copy or export it again.")
    if two:
        datatype, bitpix = struct.unpack(order + "hh", head[12:16])
        dim = struct.unpack(order + "8q", head[16:80])
        pixdim = struct.unpack(order + "8d", head[104:168])
        offset = struct.unpack(order + "q", head[168:176])[0]
    else:
        dim = struct.unpack(order + "8h", head[40:56])
        datatype, bitpix = struct.unpack(order + "hh", head[70:74])
        pixdim = struct.unpack(order + "8f", head[76:108])
        offset = int(struct.unpack(order + "f", head[108:112])[0])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]):
        raise RegistrationError(f"{role} {path}: the NIfTI header has invalid dimensions {list(dim[:ndim + 1])}; "
                                "the file is damaged.")
    if datatype not in _NIFTI_TYPES:
        raise RegistrationError(f"{role} {path}: NIfTI data type {datatype} is not supported; convert the image "
                                "to a scalar integer or float type.")
    data_path = path
    if _suffix(path) == ".hdr":
        data_path = next((p for p in (path.with_suffix(".img"), path.with_suffix(".img.gz")) if p.exists()),
                         path.with_suffix(".img"))
        offset = 0
    elif offset < needed + 4:  # NIfTI-1 and -2 standards: vox_offset >= 352 (544) in a single .nii file
        raise RegistrationError(f"{role} {path}: the NIfTI header's vox_offset is {offset}, but in a single-file "
                                f".nii the voxel data must start at byte {needed + 4} or later (the NIfTI "
                                f"standard); every voxel would be read shifted. The header is damaged: export the "
                                "image again.")
    return Layout(data_path, offset, tuple(int(d) for d in dim[1:ndim + 1]),
                  np.dtype(order + _NIFTI_TYPES[datatype]), _NIFTI_COMPONENTS.get(datatype, 1),
                  "gzip" if _opener(data_path) is gzip.open else None, tuple(float(p) for p in pixdim[1:min(ndim, 3) + 1]))


def _text_header(path: Path, separator: str, last_key: Optional[str]) -> tuple[dict[str, str], int]:
    """Key/value lines up to a blank line (NRRD) or up to `last_key` (MetaImage); returns them and the byte
    offset after the header."""
    values: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as handle:
        for raw in iter(lambda: handle.readline(65536), b""):
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if not line and last_key is None:
                break
            if line.startswith("#") or separator not in line:
                continue
            key, _, value = line.partition(separator)
            key = key.strip().lower()
            values[key] = value.strip()
            if key == last_key:
                break
            if offset > 1 << 20:
                break
    return values, offset


def _ints(path: Path, role: str, text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise RegistrationError(f"{role} {path}: the header's {what} '{text}' is invalid; the file is damaged.")
    return values


def _floats(text: str) -> tuple[float, ...]:
    numbers = re.findall(r"[-+]?(?:nan|inf|\d*\.?\d+(?:[eE][-+]?\d+)?)", text, re.IGNORECASE)
    return tuple(float(v) for v in numbers)


def _nrrd_dtype(name: str) -> str:
    name = name.lower().replace("_t", "")
    if name in ("float", "double"):
        return "f4" if name == "float" else "f8"
    unsigned = "u" if name.startswith(("u", "unsigned")) else "i"
    if "char" in name or "int8" in name:
        return unsigned + "1"
    if "short" in name or "16" in name:
        return unsigned + "2"
    if "long" in name or "64" in name:
        return unsigned + "8"
    return unsigned + "4"


def _nrrd(path: Path, role: str) -> Optional[Layout]:
    values, offset = _text_header(path, ":", None)
    encoding = values.get("encoding", "raw").lower()
    if "sizes" not in values or encoding not in ("raw", "gzip", "gz"):
        return None  # ascii, hex, bzip2 data: left to ITK
    size = _ints(path, role, values["sizes"], "sizes")
    data_file = values.get("data file") or values.get("datafile")
    data_path = path if not data_file else (path.parent / data_file)
    if data_file and " " in data_file.strip():
        return None  # a list of data files: left to ITK
    skip = int(values.get("byte skip", "0") or 0)
    offset = (offset if not data_file else 0) if skip >= 0 else -1
    order = ">" if values.get("endian", "little").lower() == "big" else "<"
    if "spacings" in values:
        spacing = _floats(values["spacings"])
    elif "space directions" in values:
        vectors = [_floats(v) for v in re.findall(r"\(([^)]*)\)", values["space directions"])]
        spacing = tuple(float(np.linalg.norm(v)) for v in vectors)
    else:
        spacing = ()
    components = 1
    kinds = values.get("kinds", "").lower().split()
    if len(kinds) == len(size) and kinds[0] not in ("domain", "space", "time"):
        # the first axis holds the components of a voxel (RGB-color, vector ...): it has no spacing
        # ("spacings: nan ..." or "space directions: none ...")
        components, size = size[0], size[1:]
        spacing = spacing[1:] if len(spacing) == len(size) + 1 else spacing
    return Layout(data_path, offset + max(skip, 0) if offset >= 0 else -1, size,
                  np.dtype(order + _nrrd_dtype(values["type"])), components,
                  "gzip@" if encoding in ("gzip", "gz") else None, spacing)


_MET_TYPES = {"met_uchar": "u1", "met_char": "i1", "met_ushort": "u2", "met_short": "i2", "met_uint": "u4",
              "met_int": "i4", "met_ulong": "u4", "met_long": "i4", "met_ulong_long": "u8",
              "met_long_long": "i8", "met_float": "f4", "met_double": "f8"}


def _metaimage(path: Path, role: str) -> Optional[Layout]:
    values, offset = _text_header(path, "=", "elementdatafile")
    element = values.get("elementtype", "").lower()
    if "dimsize" not in values or element not in _MET_TYPES or "elementdatafile" not in values:
        return None
    data_file = values["elementdatafile"]
    if data_file.upper() != "LOCAL":
        if " " in data_file or "%" in data_file or data_file.upper() == "LIST":
            return None  # a list of slice files: left to ITK
        data_path, offset = path.parent / data_file, 0
    else:
        data_path = path
    header_size = int(values.get("headersize", "0") or 0)
    offset = -1 if header_size == -1 else offset + header_size
    order = ">" if values.get("binarydatabyteordermsb", "false").lower() == "true" else "<"
    compressed = values.get("compresseddata", "false").lower() == "true"
    return Layout(data_path, offset, _ints(path, role, values["dimsize"], "DimSize"),
                  np.dtype(order + _MET_TYPES[element]), int(values.get("elementnumberofchannels", "1") or 1),
                  "zlib" if compressed else None, _floats(values.get("elementspacing", "")))


def _chunks(layout: Layout) -> Iterator[bytes]:
    """The data bytes (decompressed), in chunks; stops at the end of the stream or of the file."""
    with open(layout.data_path, "rb") as raw:
        handle = gzip.GzipFile(fileobj=raw, mode="rb") if layout.compression == "gzip" else raw
        if layout.offset > 0:
            handle.seek(layout.offset)
        if layout.compression == "gzip@":
            handle = gzip.GzipFile(fileobj=raw, mode="rb")
        if layout.compression == "zlib":
            # at most CHUNK bytes out per call: a small stream of zeros can inflate a thousandfold
            inflater, pending = zlib.decompressobj(), b""
            while not inflater.eof:
                pending = pending or handle.read(CHUNK)
                if not pending:
                    break
                yield inflater.decompress(pending, CHUNK)
                pending = inflater.unconsumed_tail
        else:
            yield from iter(lambda: handle.read(CHUNK), b"")


def _scan(path: Path, layout: Layout, role: str, finite: bool) -> None:
    """Counts the data bytes and, for float data, the non-finite values."""
    expected = layout.data_bytes
    if layout.offset == -1 and layout.compression is None:
        total = layout.data_path.stat().st_size
        if total < expected:
            raise _short(path, role, total, expected)
        layout = replace(layout, offset=total - expected)
    count, bad, rest = 0, 0, b""
    floating = finite and layout.dtype.kind == "f"
    try:
        for block in _chunks(layout):
            block = rest + block
            usable = min(len(block), expected - count) // layout.dtype.itemsize * layout.dtype.itemsize
            if floating and usable:
                values = np.frombuffer(block[:usable], dtype=layout.dtype)
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            count += usable
            rest = block[usable:] if count < expected else b""
            if count >= expected:
                break
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise RegistrationError(f"{role} {path}: the compressed data is damaged or cut short ({error}); the file is "
                                "truncated or corrupt. Copy or export it again.") from None
    except OSError as error:
        raise RegistrationError(f"{role} {path}: cannot be read ({error.strerror or error}).") from None
    if count < expected:
        raise _short(path, role, count, expected)
    if bad:
        raise RegistrationError(f"{role} {path}: {bad} voxel values are NaN or infinite. Fix or mask them "
                                "before registering.")


def _short(path: Path, role: str, found: int, expected: int) -> RegistrationError:
    return RegistrationError(f"{role} {path}: holds {found:,} bytes of voxel data but its header promises "
                             f"{expected:,}; the file is truncated (an interrupted copy or a full disk?). Copy or "
                             "export it again.")


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(voxels: int, bytes_per_voxel: float, what: str) -> None:
    """RegistrationError when `voxels` x `bytes_per_voxel` exceeds the memory available."""
    needed = voxels * bytes_per_voxel
    available = available_memory()
    if available is not None and needed > available:
        raise RegistrationError(f"{what} needs about {needed / 2**30:.1f} GiB of memory but {available / 2**30:.1f} "
                                "GiB are available. Crop or downsample it first, or use a machine with more "
                                "memory.")


def check_image_file(path: Path, role: str, finite: bool = True) -> None:
    """Refuses, before reading: an image needing more memory than available, data shorter than the header
    says, NaN/Inf values and zero, negative or non-finite spacing. Formats without a parsed header pass."""
    kind = _suffix(path)
    try:
        if kind in (".nii", ".nii.gz", ".hdr"):
            layout = _nifti(path, role)
        elif kind in (".nrrd", ".nhdr"):
            layout = _nrrd(path, role)
        elif kind in (".mha", ".mhd"):
            layout = _metaimage(path, role)
        else:
            return
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, struct.error, ValueError, OverflowError) as error:
        raise RegistrationError(f"{role} {path}: its header cannot be read ({error}); the file is damaged or "
                                "truncated. Copy or export it again.") from None
    if layout is None:
        return
    spacing = layout.spacing[:3]
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise RegistrationError(f"{role} {path}: the header's voxel spacing {list(spacing)} has a zero, negative "
                                "or non-finite value. Fix the spacing in the header (in Slicer: Volumes module, "
                                "Volume Information) and save it again.")
    check_memory(layout.voxels, layout.components * layout.dtype.itemsize + 4 * WORKING_COPIES,
                 f"{role} {path} ({' x '.join(map(str, layout.size))} voxels)")
    if not layout.data_path.is_file():
        raise RegistrationError(f"{role} {path}: its data file {layout.data_path} is missing. Keep the header "
                                "and data files together.")
    _scan(path, layout, role, finite)
