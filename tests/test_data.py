"""Calibration / evaluation images: sources, bad folders, the split, timm's preprocessing."""
import hashlib
import io as _io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from mvlib import data, paths


@pytest.fixture(scope="module")
def tf(xxs):
    """timm's evaluation transform of mobilevit_xxs at 256 px."""
    return data.transform(xxs[1], 256)


def _png(path, w=96, h=80, seed=0, mode="RGB"):
    """Write a random-noise image of the given size."""
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _folder(tmp_path, n, sub=None, **kw):
    """A folder of n images, optionally inside a sub-folder."""
    d = tmp_path / sub if sub else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return [_png(d / f"img{i}.png", seed=i + 100 * len(sub or ""), **kw) for i in range(n)]


def test_flat_user_folder_is_split_without_overlap_and_preprocessed_by_timm(tmp_path, xxs, tf):
    files = _folder(tmp_path, 7)
    (tmp_path / "notes.txt").write_text("not an image")  # ignored: no image suffix
    images = data.load(xxs[1], 256, calib_images=4, eval_images=3, seed=0, image_dir=str(tmp_path))
    assert images.source == "folder" and images.eval_labels is None
    assert images.calib.shape == (4, 3, 256, 256) and images.eval.shape == (3, 3, 256, 256)
    assert not set(images.calib_ids) & set(images.eval_ids)
    assert set(images.calib_ids) | set(images.eval_ids) == {str(f) for f in files}
    # exactly timm's eval transform: the first evaluation image, transformed directly
    import timm

    from mvlib.model import data_config
    direct = timm.data.create_transform(**data_config(xxs[1]), is_training=False)
    with Image.open(images.eval_ids[0]) as im:
        expected = np.asarray(direct(im.convert("RGB")))
    np.testing.assert_array_equal(images.eval[0], expected)
    assert 0.0 <= images.calib.min() and images.calib.max() <= 1.0  # MobileViT: mean 0, std 1


def test_wordnet_class_folders_give_imagenet_labels(tmp_path, tf):
    _folder(tmp_path, 3, sub="n01440764")   # tench, index 0
    _folder(tmp_path, 3, sub="n03888257")   # parachute, index 701
    images = data.from_folder(tmp_path, tf, calib=2, evaluation=4, seed=1)
    assert images.eval_labels is not None
    for ident, label in zip(images.eval_ids, images.eval_labels, strict=True):
        assert label == (0 if "n01440764" in ident else 701)


def test_other_class_folder_names_are_unlabelled(tmp_path, tf):
    _folder(tmp_path, 2, sub="cats")
    _folder(tmp_path, 2, sub="n01440764")
    images = data.from_folder(tmp_path, tf, calib=2, evaluation=2, seed=0)
    assert images.eval_labels is None and "cats" in images.notes[0]


def test_imagenet_index():
    assert data.imagenet_index("n01440764") == 0
    assert data.imagenet_index("n03888257") == 701
    assert data.imagenet_index("5") == 5
    assert data.imagenet_index("1000") is None and data.imagenet_index("cats") is None


def test_empty_and_missing_folders_are_clear_errors(tmp_path, tf):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(data.ImageSourceError, match="holds no images"):
        data.from_folder(tmp_path / "empty", tf, 2, 2, 0)
    with pytest.raises(data.ImageSourceError, match="does not exist"):
        data.from_folder(tmp_path / "nope", tf, 2, 2, 0)


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, tf):
    _folder(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        images = data.from_folder(tmp_path, tf, calib=2, evaluation=1, seed=0)
    assert not any("broken" in i for i in images.calib_ids + images.eval_ids)
    assert len(images.calib) + len(images.eval) == 3


def test_a_folder_of_only_unreadable_images_is_an_error(tmp_path, tf):
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"PNG? no")
    with pytest.warns(RuntimeWarning), pytest.raises(data.ImageSourceError, match="no usable image"):
        data.from_folder(tmp_path, tf, 2, 2, 0)


def test_images_below_the_minimum_side_are_skipped(tmp_path, tf):
    _folder(tmp_path, 2, w=300, h=200)
    _png(tmp_path / "tiny.png", w=200, h=data.MIN_SIDE - 1)
    _png(tmp_path / "gray.png", w=data.MIN_SIDE, h=data.MIN_SIDE, mode="L")  # exactly the minimum, grey: kept
    with pytest.warns(RuntimeWarning, match=rf"tiny.png.*{data.MIN_SIDE}"):
        images = data.from_folder(tmp_path, tf, calib=2, evaluation=1, seed=0)
    ids = images.calib_ids + images.eval_ids
    assert any("gray" in i for i in ids) and not any("tiny" in i for i in ids)
    assert images.calib.shape[1:] == (3, 256, 256)


def test_only_tiny_images_is_an_error(tmp_path, tf):
    for i in range(2):
        _png(tmp_path / f"t{i}.png", w=16, h=16, seed=i)
    with pytest.warns(RuntimeWarning), pytest.raises(data.ImageSourceError, match="no usable image"):
        data.from_folder(tmp_path, tf, 2, 2, 0)


def test_split_counts_shrink_in_proportion_and_never_overlap():
    assert data.split_counts(1000, 512, 256) == (512, 256)
    assert data.split_counts(30, 20, 10) == (20, 10)
    n_cal, n_eval = data.split_counts(9, 512, 256)
    assert (n_cal, n_eval) == (6, 3)
    assert data.split_counts(2, 512, 256) == (1, 1)
    with pytest.raises(data.ImageSourceError, match="at least 2"):
        data.split_counts(1, 4, 4)
    with pytest.raises(ValueError, match="at least 1"):
        data.split_counts(10, 0, 4)
    items = [data.Item(paths.ROOT / f"f{i}.png") for i in range(9)]
    cal, ev = data.split(items, 512, 256, seed=3)
    assert not {i.id for i in cal} & {i.id for i in ev} and len(cal) + len(ev) == 9
    assert [i.id for i in data.split(items, 512, 256, seed=3)[1]] == [i.id for i in ev]  # seeded


def test_small_folder_warns_about_the_reduced_counts(tmp_path, tf):
    _folder(tmp_path, 3)
    with pytest.warns(RuntimeWarning, match="calib_images"):
        images = data.from_folder(tmp_path, tf, calib=8, evaluation=16, seed=0)
    assert len(images.calib) >= 1 and len(images.eval) >= 1 and len(images.calib) + len(images.eval) == 3


def test_shipped_images_fallback_is_loud_and_splits_by_picture(xxs, monkeypatch):
    monkeypatch.setenv("MVLIB_OFFLINE", "1")
    with pytest.warns(RuntimeWarning, match="IMAGES FALLBACK"):
        images = data.load(xxs[1], 256, calib_images=12, eval_images=6, seed=0)
    assert images.source == "shipped" and images.eval_labels is None and "shipped" in images.label
    assert images.calib.shape == (12, 3, 256, 256) and images.eval.shape == (6, 3, 256, 256)
    pictures = lambda ids: {re.split(r"#", i)[0].rsplit("/", 1)[-1] for i in ids}  # noqa: E731
    assert not pictures(images.calib_ids) & pictures(images.eval_ids), "a picture feeds both sides"
    flat_c = images.calib.reshape(len(images.calib), -1)
    flat_e = images.eval.reshape(len(images.eval), -1)
    assert not any((flat_c == e).all(axis=1).any() for e in flat_e)
    assert len({x.tobytes() for x in flat_c}) == len(flat_c), "variations must differ from each other"
    again = data.from_shipped(data.transform(xxs[1], 256), 12, 6, 0)
    np.testing.assert_array_equal(again.calib, images.calib)  # deterministic


def test_shipped_images_match_their_provenance():
    text = (paths.IMAGES / "PROVENANCE.md").read_text()
    files = data.shipped_files()
    assert len(files) >= 8
    assert sum(f.stat().st_size for f in files) < 4 * 2**20, "keep data/images small"
    for f in files:
        row = next((line for line in text.splitlines() if line.startswith(f"| {f.name} |")), None)
        assert row is not None, f"{f.name} is not in PROVENANCE.md"
        assert hashlib.sha256(f.read_bytes()).hexdigest() in row, f"{f.name} changed since PROVENANCE.md"
        assert re.search(r"public domain|CC0", row, re.I)


def test_imagenette_offline_is_unavailable_quickly(tmp_path, monkeypatch):
    monkeypatch.setenv("MVLIB_OFFLINE", "1")
    with pytest.raises(data.SourceUnavailable, match="offline"):
        data.imagenette_val(tmp_path)


def _tarball(path):
    """A tiny archive shaped like ImageNette: val and train folders of class sub-folders."""
    with tarfile.open(path, "w:gz") as tar:
        for split, wnid in (("val", "n01440764"), ("val", "n03888257"), ("train", "n01440764")):
            buf = _io.BytesIO()
            Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"imagenette2-320/{split}/{wnid}/x.JPEG")
            info.size = len(buf.getvalue())
            tar.addfile(info, _io.BytesIO(buf.getvalue()))
    return path


def test_imagenette_download_checks_md5_and_extracts_only_val(tmp_path, monkeypatch):
    archive = _tarball(tmp_path / "imagenette2-320.tgz")
    monkeypatch.setattr(data, "_reachable", lambda url, timeout: (True, "test"))
    monkeypatch.setattr(data, "IMAGENETTE_URL", archive.as_uri())
    monkeypatch.setattr(data, "IMAGENETTE_MD5", "0" * 32)
    with pytest.raises(data.SourceUnavailable, match="MD5"):
        data.imagenette_val(tmp_path / "cache")
    assert not (tmp_path / "cache" / "imagenette2-320.tgz").exists(), "a bad download must not be kept"
    monkeypatch.setattr(data, "IMAGENETTE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    val = data.imagenette_val(tmp_path / "cache")
    assert sorted(p.name for p in val.iterdir()) == ["n01440764", "n03888257"]
    assert not (val.parent / "train").exists()
    items, note = data.list_folder(val)
    assert sorted(i.label for i in items) == [0, 701] and "labelled" in note
    (tmp_path / "cache" / "val.ok").unlink()  # extracted again, from the archive it keeps: no second download
    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("downloaded the archive again"))
    assert data.imagenette_val(tmp_path / "cache") == val


def test_images_are_preprocessed_on_one_torch_thread_into_the_same_arrays(xxs):
    import torch
    tf = data.transform(xxs[1], 256)
    seen = []
    counted = lambda im: (seen.append(torch.get_num_threads()), tf(im))[1]  # noqa: E731
    files = data.shipped_files()[:2]
    items = [data.Item(p, None, k) for p in files for k in range(3)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a team of threads per tiny op made the full profile's images stage 5x slower
    try:
        fast = data.load_items(items, counted, seed=0)
        assert torch.get_num_threads() == 2, "the caller's thread count must come back"
        slow = np.stack([tf(data.variation(data.open_image(it.path), it.variation, 0)) for it in items])
    finally:
        torch.set_num_threads(before)
    assert seen == [1] * len(items)
    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()  # noqa: E731
    assert digest(fast) == digest(slow), "one thread must give the very same pixels"
