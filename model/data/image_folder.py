"""Small images in the class-folder layout (``train/<class>/*.jpg``, ``test/<class>/*.jpg``).

The layout torchvision's ``ImageFolder`` reads, from a directory or straight from a ``.tar``/
``.tar.gz`` archive of one (the CIFAR-10 JPEG archive in ``../shared/data`` is one). All images
are decoded once into uint8 arrays and cached as ``.npz`` (in ``cache_dir``, by default
``~/.cache/sigmabranch``), keyed by the source's content, so an epoch does not decode 50,000
JPEGs. Classes are the sorted folder names; both splits must have the same ones.

Every image must decode and have the expected ``(height, width)``; a missing split or class
folder, an empty split or class, an unreadable image or a wrong size is a :class:`DatasetError`
naming the file.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .common import DatasetError

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")  # as ImageFolder
CACHE_FORMAT = 1  # bump when the cached arrays change meaning


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIGMABRANCH_CACHE", Path.home() / ".cache" / "sigmabranch"))


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def is_class_folder_tree(path: Path) -> bool:
    """A directory with ``train/`` and ``test/``, or an archive of one (checked when read)."""
    return is_archive(path) or (path.is_dir() and all((path / s).is_dir() for s in SPLITS))


# --- where the images come from ---------------------------------------------------------------

def _archive_members(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, display name, bytes) of every image file in the archive, in archive order."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                parts = parts[1:] if parts and parts[0] == "." else parts
                # A single top folder above train/ and test/ is allowed (a tarred directory).
                if len(parts) == 4 and parts[1] in SPLITS:
                    parts = parts[1:]
                if len(parts) != 3 or parts[0] not in SPLITS or not parts[2].lower().endswith(IMAGE_EXTENSIONS):
                    continue
                data = archive.extractfile(member).read()
                yield parts[0], parts[1], f"{path}:{member.name}", data
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"cannot read the archive {str(path)!r} (truncated or corrupt?): {err}") from err


def _directory_members(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"expected the directory {str(split_dir)!r} (one sub-folder per class)")
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = [f for f in sorted(class_dir.iterdir())
                     if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                raise DatasetError(f"class folder {str(class_dir)!r} holds no images "
                                   f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
            for file in files:
                try:
                    data = file.read_bytes()
                except OSError as err:
                    raise DatasetError(f"cannot read image {str(file)!r}: {err}") from err
                yield split, class_dir.name, str(file), data


def _source_key(source: Path, image_size: tuple[int, int]) -> str:
    """Content hash of the archive, or of the directory's file names, sizes and times."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT} {image_size}".encode())
    if source.is_file():
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        for split in SPLITS:
            for file in sorted((source / split).rglob("*")):
                if file.is_file():
                    stat = file.stat()
                    digest.update(f"{file.relative_to(source)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# --- decoding ---------------------------------------------------------------------------------

def _decode(data: bytes, name: str, image_size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as raw:
            image = raw.convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise DatasetError(f"cannot decode image {name!r}: {err}") from err
    if (image.height, image.width) != image_size:
        raise DatasetError(f"image {name!r} is {image.width}x{image.height}, expected "
                           f"{image_size[1]}x{image_size[0]} (data.options.image_size)")
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_class_folders(source: Path, image_size: tuple[int, int], progress: bool = True
                         ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """{split: (N, 3, H, W) uint8 images, int64 labels}, and the sorted class names."""
    members = _archive_members(source) if source.is_file() else _directory_members(source)
    images: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in SPLITS}
    for split, cls, name, data in tqdm(members, desc=f"decoding {source.name}", unit="img",
                                       disable=not progress or None, leave=False):
        images[split].setdefault(cls, []).append(_decode(data, name, image_size))
    for split in SPLITS:
        if not images[split]:
            raise DatasetError(f"{str(source)!r}: the {split!r} split holds no images "
                               f"(expected {split}/<class>/*.jpg)")
    classes = sorted(images["train"])
    if sorted(images["test"]) != classes:
        differ = sorted(set(classes) ^ set(images["test"]))
        raise DatasetError(f"{str(source)!r}: train/ and test/ have different class folders "
                           f"(e.g. {', '.join(differ[:5])}); labels would not line up")
    arrays = {}
    for split in SPLITS:
        per_class = [images[split][c] for c in classes]
        x = np.stack([img for imgs in per_class for img in imgs])
        y = np.concatenate([np.full(len(imgs), label, np.int64) for label, imgs in enumerate(per_class)])
        arrays[split] = (x, y)
    return arrays, classes


def load_class_folders(source: str | os.PathLike, image_size: tuple[int, int] = (32, 32),
                       cache_dir: str | os.PathLike | None = None, progress: bool = True
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """:func:`decode_class_folders`, cached as one ``.npz`` per source content."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"class-folder dataset {str(source)!r} does not exist")
    if not is_class_folder_tree(source):
        raise DatasetError(f"{str(source)!r} is neither a directory with train/ and test/ class "
                           f"folders nor a .tar/.tar.gz archive of one")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = cache / f"{source.name.split('.')[0]}-{_source_key(source, image_size)}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                arrays = {s: (npz[f"{s}_x"], npz[f"{s}_y"]) for s in SPLITS}
                return arrays, [str(c) for c in npz["classes"]]
        except Exception:  # a truncated cache file (killed mid-write) is rebuilt, not fatal
            pass
    arrays, classes = decode_class_folders(source, image_size, progress)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".partial")
    with open(partial, "wb") as f:  # write then rename: a killed run never leaves a half file
        np.savez(f, classes=np.array(classes), **{f"{s}_{k}": a for s in SPLITS
                                                  for k, a in zip("xy", arrays[s])})
    partial.replace(cached)
    return arrays, classes
