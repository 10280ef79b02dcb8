"""Calibration and evaluation images: a user folder, ImageNette's validation split, or the shipped samples.

Sources, in this order (the first that is available wins):
1. `image_dir`, a folder the user names: either flat (unlabelled) or with one
   sub-folder per class; sub-folders named by ImageNet-1k WordNet id
   (`n01440764`) or class index (`0`..`999`) give labels, so top-1 is real.
2. ImageNette's validation split (10 ImageNet classes, labels mapped to
   ImageNet-1k indices), downloaded once into the build cache and checked
   against its MD5 when the network allows.
3. The ten public-domain / CC0 pictures in `data/images` (see its
   PROVENANCE.md) plus seeded variations of them (crop, flip, jitter); no labels.

Rules for a folder: files with an image suffix are read (others are ignored);
a file that cannot be decoded is skipped with a warning, and so is an image
whose shorter side is below `MIN_SIDE` pixels (timm's transform would blow it
up more than 4x); a folder with no usable image is an error. Preprocessing is
exactly timm's evaluation transform for the model (resize the shorter side to
img_size / crop_pct, bicubic; centre crop; no normalisation for MobileViT).
Calibration and evaluation never share a file (nor, for the shipped samples, a
source picture).

Serves: notebook 04 (calibration and evaluation images).
"""
import contextlib
import itertools
import os
import shutil
import tarfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mvlib import env, io, paths

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}
MIN_SIDE = 64  # shorter side in pixels; smaller images are skipped (upscaled > 4x to 256 they carry no detail)
# ImageNette v2, 320 px (shorter side); URL and MD5 as in torchvision.datasets.Imagenette.
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
IMAGENETTE_MD5 = "3df6f0d01a2c9592104656642f5e78a3"
IMAGENETTE_TIMEOUT_S = 5.0  # deciding to fall back must be quick
SOURCES = ("folder", "imagenette", "shipped")


class ImageSourceError(ValueError):
    """A named image folder cannot serve as calibration / evaluation data."""


class SourceUnavailable(RuntimeError):
    """An optional source (ImageNette) is not available here; the caller falls back."""


@dataclass
class Item:
    """One image to load: its file, an ImageNet-1k label (or None) and a variation number (0 = as is)."""
    path: Path
    label: int | None = None
    variation: int = 0

    @property
    def id(self) -> str:
        """Stable identity used to prove calibration and evaluation are disjoint."""
        return f"{self.path}#{self.variation}" if self.variation else str(self.path)


@dataclass
class ImageSet:
    """Preprocessed calibration and evaluation images, and where they came from."""
    source: str                 # one of SOURCES
    label: str                  # what figures and tables say about the images
    calib: np.ndarray           # [N, 3, H, W] float32
    eval: np.ndarray            # [M, 3, H, W] float32
    eval_labels: np.ndarray | None  # ImageNet-1k indices of the evaluation images, or None
    calib_ids: list[str] = field(default_factory=list)
    eval_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """A manifest-sized description (no pixels)."""
        return {"source": self.source, "label": self.label, "calib_images": int(len(self.calib)),
                "eval_images": int(len(self.eval)), "labelled": self.eval_labels is not None,
                "input_shape": list(self.calib.shape[1:]), "notes": list(self.notes)}


# ---------------------------------------------------------------- labels
def imagenet_index(name: str) -> int | None:
    """ImageNet-1k class index of a folder name: a WordNet id (n01440764) or an index 0..999; else None."""
    if name.isdigit():
        idx = int(name)
        return idx if 0 <= idx < 1000 else None
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return info.label_names().index(name) if name in info.label_names() else None


# ---------------------------------------------------------------- folders
def _is_image(p: Path) -> bool:
    """A visible file with an image suffix."""
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def list_folder(folder: Path | str) -> tuple[list[Item], str]:
    """Image files of a flat folder or a folder of class sub-folders; a note on labels."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ImageSourceError(f"image folder {str(folder)!r} does not exist or is not a folder; "
                               "pass image_dir='' to use ImageNette or the shipped samples")
    top = sorted(p for p in folder.iterdir() if _is_image(p))
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    nested = {d: sorted(p for p in d.iterdir() if _is_image(p)) for d in subs}
    nested = {d: files for d, files in nested.items() if files}
    if not top and not nested:
        raise ImageSourceError(f"image folder {folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
                               "directly inside it and one level down); put images there or pass image_dir=''")
    labels = {d: imagenet_index(d.name) for d in nested}
    if nested and not top and all(v is not None for v in labels.values()):
        items = [Item(p, labels[d]) for d, files in nested.items() for p in files]
        return items, f"{len(nested)} class folders named by ImageNet-1k id: labelled"
    items = [Item(p) for p in top] + [Item(p) for files in nested.values() for p in files]
    odd = next((d.name for d, v in labels.items() if v is None), "")
    why = ("flat folder" if not nested else "images at the top level besides sub-folders" if top else
           f"sub-folder names are not ImageNet-1k WordNet ids or indices (e.g. {odd!r})")
    return items, f"unlabelled ({why}): only agreement with FP32 is measured"


def open_image(path: Path) -> Image.Image:
    """Decode an image fully and convert it to RGB as timm's dataset readers do (`Image.convert("RGB")`)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def usable(items: Sequence[Item], min_side: int = MIN_SIDE) -> tuple[list[Item], list[str]]:
    """Items whose file decodes and is large enough; reasons for the others."""
    ok, skipped = [], []
    for it in items:
        try:
            with Image.open(it.path) as im:
                im.verify()  # cheap integrity check without decoding all pixels
            with Image.open(it.path) as im:
                size = im.size
        except Exception as err:  # PIL raises many types for broken files
            skipped.append(f"{it.path.name}: unreadable ({type(err).__name__})")
            continue
        if min(size) < min_side:
            skipped.append(f"{it.path.name}: {size[0]}x{size[1]} is smaller than {min_side} px on its shorter side")
            continue
        ok.append(it)
    return ok, skipped


def _warn_skipped(folder: Path, skipped: list[str]) -> None:
    """Say loudly which files were left out and why."""
    if skipped:
        msg = (f"{len(skipped)} file(s) in {folder} skipped: " + "; ".join(skipped[:5])
               + (f"; ... {len(skipped) - 5} more" if len(skipped) > 5 else ""))
        print("WARNING: " + msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------- split
def split_counts(n: int, calib: int, evaluation: int) -> tuple[int, int]:
    """How many of `n` distinct images go to calibration and evaluation (evaluation first, both >= 1)."""
    if calib < 1 or evaluation < 1:
        raise ValueError(f"calib_images ({calib}) and eval_images ({evaluation}) must both be at least 1")
    if n < 2:
        raise ImageSourceError(f"need at least 2 usable images (one to calibrate, one to evaluate), found {n}")
    if n >= calib + evaluation:
        return calib, evaluation
    n_eval = min(evaluation, max(1, round(n * evaluation / (calib + evaluation))), n - 1)
    return n - n_eval, n_eval


def split(items: Sequence[Item], calib: int, evaluation: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Seeded disjoint split: evaluation items, then calibration items, from one shuffle of distinct files."""
    n_cal, n_eval = split_counts(len(items), calib, evaluation)
    order = np.random.default_rng(seed).permutation(len(items))
    chosen = [items[i] for i in order]
    return chosen[n_eval:n_eval + n_cal], chosen[:n_eval]


# ---------------------------------------------------------------- preprocessing
def transform(model, img_size: int) -> Callable[[Image.Image], np.ndarray]:
    """timm's evaluation transform for `model` at `img_size`, returning float32 CHW arrays."""
    import timm

    from mvlib.model import data_config
    cfg = dict(data_config(model))
    cfg["input_size"] = (3, img_size, img_size)
    tf = timm.data.create_transform(**cfg, is_training=False)
    return lambda im: np.asarray(tf(im), dtype=np.float32)


def variation(im: Image.Image, k: int, seed: int) -> Image.Image:
    """Deterministic variation `k` of a picture (0: unchanged): random crop, flip, brightness/contrast/colour."""
    if k == 0:
        return im
    rng = np.random.default_rng([seed, k, *im.size])
    w, h = im.size
    scale, ratio = rng.uniform(0.3, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, max(MIN_SIDE, round(np.sqrt(scale * w * h * ratio)))))
    ch = int(min(h, max(MIN_SIDE, round(np.sqrt(scale * w * h / ratio)))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = im.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(float(rng.uniform(0.7, 1.3)))
    return out


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Within: PyTorch's CPU ops on one thread (restored after)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_items(items: Sequence[Item], tf: Callable, seed: int) -> np.ndarray:
    """Decode, vary and preprocess items into one float32 NCHW array."""
    groups = [list(g) for _, g in itertools.groupby(items, key=lambda it: it.path)]  # one decode per picture
    # timm's transform is a few element-wise torch ops on one small image: a team of threads per op costs more than
    # the op (the shipped images took 5x longer on 2 busy cores), and element-wise results do not depend on threads;
    # PIL and torch let go of the GIL while they work, so pictures go to threads of this process, in order
    with one_torch_thread(), ThreadPoolExecutor(max(1, min(len(groups), len(os.sched_getaffinity(0))))) as pool:
        arrays = [a for done in pool.map(lambda g: _load_group(g, tf, seed), groups) for a in done]
    return np.stack(arrays).astype(np.float32, copy=False)


def _load_group(items: Sequence[Item], tf: Callable, seed: int) -> list[np.ndarray]:
    """Items of one picture, decoded once, varied and preprocessed."""
    im = open_image(items[0].path)
    return [tf(variation(im, it.variation, seed)) for it in items]


# ---------------------------------------------------------------- sources
def from_folder(folder: Path | str, tf: Callable, calib: int, evaluation: int, seed: int,
                min_side: int = MIN_SIDE, source: str = "folder", label: str = "") -> ImageSet:
    """Images of a user folder (or the extracted ImageNette split), split without overlap and preprocessed."""
    folder = Path(folder).expanduser()
    items, label_note = list_folder(folder)
    ok, skipped = usable(items, min_side)
    _warn_skipped(folder, skipped)
    if not ok:
        raise ImageSourceError(f"no usable image in {folder}: all {len(items)} were skipped "
                               f"({'; '.join(skipped[:3])}); need readable images of at least {min_side} px")
    cal_items, eval_items = split(ok, calib, evaluation, seed)
    notes = [label_note] + ([f"{len(skipped)} file(s) skipped"] if skipped else [])
    if (len(cal_items), len(eval_items)) != (calib, evaluation):
        msg = (f"{folder} has {len(ok)} usable images, fewer than calib_images + eval_images = {calib + evaluation}: "
               f"using {len(cal_items)} to calibrate and {len(eval_items)} to evaluate")
        print("WARNING: " + msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        notes.append(msg)
    labelled = all(it.label is not None for it in eval_items)
    return ImageSet(source, label or f"user images ({folder.name}, {len(ok)} usable)",
                    load_items(cal_items, tf, seed), load_items(eval_items, tf, seed),
                    np.array([it.label for it in eval_items]) if labelled else None,
                    [it.id for it in cal_items], [it.id for it in eval_items], notes)


def _reachable(url: str, timeout: float) -> tuple[bool, str]:
    """Whether the URL's host accepts a TCP connection within `timeout` seconds (DNS included)."""
    return env.reachable(urllib.parse.urlparse(url).hostname, 443, timeout)


def imagenette_val(cache: Path | None = None, timeout: float = IMAGENETTE_TIMEOUT_S) -> Path:
    """ImageNette's extracted validation folder (class folders named by WordNet id), downloading it once."""
    root = Path(cache or paths.CACHE / "imagenette")
    val = root / "imagenette2-320" / "val"
    if (root / "val.ok").exists() and val.is_dir():
        return val
    ok, why = _reachable(IMAGENETTE_URL, timeout)
    if not ok:
        raise SourceUnavailable(why)
    try:
        archive, _ = io.cached(root / Path(IMAGENETTE_URL).name, {"url": IMAGENETTE_URL, "md5": IMAGENETTE_MD5},
                               lambda tmp: _download(IMAGENETTE_URL, tmp, IMAGENETTE_MD5), "ImageNette archive")
    except OSError as err:  # URLError, timeouts and resets are all OSErrors
        raise SourceUnavailable(f"ImageNette download failed: {type(err).__name__}: {err}") from err
    tmp = root / ".extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:  # only the validation split, never outside the cache ("data" filter)
        members = [m for m in tar.getmembers() if m.name.startswith("imagenette2-320/val/") and m.isfile()]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(root / "imagenette2-320", ignore_errors=True)
    os.replace(tmp / "imagenette2-320", root / "imagenette2-320")  # a half extraction is never seen as done
    shutil.rmtree(tmp, ignore_errors=True)
    io.write_text(root / "val.ok", f"{IMAGENETTE_URL} md5 {IMAGENETTE_MD5}\n")
    return val


def _download(url: str, dest: Path, md5: str) -> None:
    """Download `url` into `dest` (a temporary file of io.cached); SourceUnavailable unless its MD5 is `md5`."""
    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            out.write(chunk)
    got = io.checksum(dest, "md5")  # the publisher gives an MD5
    if got != md5:
        raise SourceUnavailable(f"{Path(url).name}: MD5 {got} differs from the expected {md5}; not used")


def shipped_files() -> list[Path]:
    """The shipped sample pictures (data/images, see PROVENANCE.md)."""
    files = sorted(p for p in paths.IMAGES.iterdir() if _is_image(p)) if paths.IMAGES.is_dir() else []
    if len(files) < 2:
        raise ImageSourceError(f"the shipped samples in {paths.IMAGES} are missing (found {len(files)}); "
                               "restore data/images from git or pass image_dir")
    return files


def from_shipped(tf: Callable, calib: int, evaluation: int, seed: int) -> ImageSet:
    """Seeded variations of the shipped pictures; calibration and evaluation use different pictures."""
    files = shipped_files()
    split_counts(len(files), calib, evaluation)  # validates the counts
    n_eval_files = min(len(files) - 1, max(1, round(len(files) * evaluation / (calib + evaluation))))
    order = np.random.default_rng(seed).permutation(len(files))
    eval_files = [files[i] for i in order[:n_eval_files]]
    cal_files = [files[i] for i in order[n_eval_files:]]

    def expand(group: list[Path], count: int) -> list[Item]:
        per = [count // len(group) + (i < count % len(group)) for i in range(len(group))]
        return [Item(p, None, k) for p, n in zip(group, per, strict=True) for k in range(n)]

    cal_items, eval_items = expand(cal_files, calib), expand(eval_files, evaluation)
    note = (f"{len(cal_files)} pictures for calibration, {len(eval_files)} others for evaluation, "
            "seeded variations (crop, flip, jitter); unlabelled")
    return ImageSet("shipped", f"shipped sample images ({len(files)} public-domain/CC0 pictures + variations)",
                    load_items(cal_items, tf, seed), load_items(eval_items, tf, seed), None,
                    [it.id for it in cal_items], [it.id for it in eval_items], [note])


def load(model, img_size: int, calib_images: int, eval_images: int, seed: int = 0, image_dir: str = "",
         imagenette: bool = True, min_side: int = MIN_SIDE) -> ImageSet:
    """Calibration and evaluation images from the first available source (module docstring), preprocessed."""
    tf = transform(model, img_size)
    if image_dir:
        return from_folder(image_dir, tf, calib_images, eval_images, seed, min_side)
    why = "disabled (imagenette=False)"
    if imagenette:
        try:
            val = imagenette_val()
            return from_folder(val, tf, calib_images, eval_images, seed, min_side, source="imagenette",
                               label="ImageNette val (10 ImageNet classes)")
        except SourceUnavailable as err:
            why = str(err)
    banner = (f"IMAGES FALLBACK: no image_dir given and ImageNette is unavailable ({why}); using the shipped "
              f"public-domain/CC0 sample pictures in {paths.IMAGES} and seeded variations of them. They are "
              "unlabelled: INT8 is compared with FP32 only, not with ImageNet labels.")
    print("!" * 100 + "\n" + banner + "\n" + "!" * 100)
    warnings.warn(banner, RuntimeWarning, stacklevel=2)
    images = from_shipped(tf, calib_images, eval_images, seed)
    images.notes.append(f"fallback: {why}")
    return images
