"""Tests for bench.data: image folders, named datasets, random training crops and folder manifests."""

from __future__ import annotations

import hashlib
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import (
    SKIMAGE_NATURAL_COLOUR,
    SKIMAGE_NATURAL_GREY,
    CropParams,
    DatasetError,
    ImageFolder,
    ImageReadError,
    RandomCrops,
    available,
    load_dataset,
    manifest_sha256,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KODAK = SHARED_DATA / "kodak24"
needs_kodak = pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak photos not found at {KODAK}")


def reference_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float (C, H, W) in [-1, 1], written out independently of bench.data."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.tensor(pixels.transpose(2, 0, 1).astype(np.float32) * (2.0 / 255.0) - 1.0)


def write_noise_png(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def kodak_wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one non-square real photo: the top 373 rows of kodim05 (500 x 373, odd margin)."""
    if not KODAK.is_dir():
        pytest.skip(f"Kodak photos not found at {KODAK}")
    folder = tmp_path_factory.mktemp("wide")
    pixels = np.asarray(Image.open(KODAK / "kodim05.png").convert("RGB"))
    Image.fromarray(pixels[:373]).save(folder / "wide.png")
    return folder


@needs_kodak
def test_image_folder_sorted_ids_are_stems() -> None:
    dataset = ImageFolder(KODAK, size=16)
    assert dataset.ids == [f"kodim{i:02d}" for i in range(1, 25)]
    assert [p.name for p in dataset.paths] == sorted(p.name for p in KODAK.glob("*.png"))
    assert len(dataset) == 24


@needs_kodak
def test_image_folder_items_are_float32_in_signed_range() -> None:
    dataset = ImageFolder(KODAK, size=48, n_images=2)
    image_id, image = dataset[1]
    assert image_id == "kodim02"
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    # A real photo spans most of the range, so a wrong scale (e.g. [0, 1]) would fail here.
    assert image.min() < -0.5 and image.max() > 0.5


@needs_kodak
def test_image_folder_native_size_is_exact_pixels() -> None:
    # Kodak photos are 500 x 500: at size 500 nothing is resampled, so the values are the file's bytes.
    _, image = ImageFolder(KODAK, size=500, n_images=1)[0]
    expected = reference_tensor(np.asarray(Image.open(KODAK / "kodim01.png").convert("RGB")))
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)


@needs_kodak
def test_image_folder_grayscale_uses_pil_luma() -> None:
    _, image = ImageFolder(KODAK, size=40, channels=1, n_images=1)[0]
    assert image.shape == (1, 40, 40)
    grey = Image.open(KODAK / "kodim01.png").convert("L").resize((40, 40), Image.Resampling.BICUBIC)
    torch.testing.assert_close(image, reference_tensor(np.asarray(grey)), rtol=0, atol=1e-6)


def test_image_folder_center_crop_matches_pil_reference(kodak_wide: Path) -> None:
    _, image = ImageFolder(kodak_wide, size=96)[0]
    pixels = np.asarray(Image.open(kodak_wide / "wide.png").convert("RGB"))
    assert pixels.shape == (373, 500, 3)
    left = (500 - 373) // 2  # 63: the odd extra column goes to the right margin
    centre = Image.fromarray(pixels[:, left : left + 373]).resize((96, 96), Image.BICUBIC, reducing_gap=None)
    # Exact up to float rounding of v / 127.5 - 1: both sides resize the same 8-bit pixels with Pillow.
    torch.testing.assert_close(image, reference_tensor(np.asarray(centre)), rtol=0, atol=1e-6)
    shifted = Image.fromarray(pixels[:, left + 1 : left + 374]).resize((96, 96), Image.BICUBIC)
    assert not torch.allclose(image, reference_tensor(np.asarray(shifted)), atol=1e-3)


@needs_kodak
def test_image_folder_batches_match_items() -> None:
    dataset = ImageFolder(KODAK, size=16, n_images=5)
    batches = list(dataset.batches(2))
    assert [ids for ids, _ in batches] == [["kodim01", "kodim02"], ["kodim03", "kodim04"], ["kodim05"]]
    assert [tuple(images.shape) for _, images in batches] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    torch.testing.assert_close(batches[1][1][0], dataset[2][1], rtol=0, atol=0)
    with pytest.raises(DatasetError, match="batch_size"):
        next(dataset.batches(0))


@needs_kodak
def test_image_folder_n_images_keeps_first_in_sorted_order() -> None:
    assert ImageFolder(KODAK, size=8, n_images=3).ids == ["kodim01", "kodim02", "kodim03"]
    with pytest.raises(DatasetError, match="only 24"):
        ImageFolder(KODAK, size=8, n_images=25)


def test_image_folder_corrupt_file_error_names_file(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "good.png", 20, 20, seed=0)
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(1).bytes(2000))
    dataset = ImageFolder(tmp_path, size=8)
    assert dataset.ids == ["broken", "good"]
    assert dataset[1][1].shape == (3, 8, 8)
    with pytest.raises(ImageReadError, match="broken.png"):
        dataset[0]


def test_image_folder_truncated_file_error_names_file(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "whole.png", 64, 64, seed=0)
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "whole.png").unlink()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        ImageFolder(tmp_path, size=8)[0]


def test_image_folder_empty_or_missing_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no image files.*empty"):
        ImageFolder(tmp_path, size=8)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no image files.*notes.txt"):
        ImageFolder(tmp_path, size=8)
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere", size=8)
    with pytest.raises(DatasetError, match="is a file"):
        ImageFolder(tmp_path / "notes.txt", size=8)


def test_image_folder_duplicate_stems_error_names_both(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "photo.png", 8, 8, seed=0)
    Image.open(tmp_path / "photo.png").save(tmp_path / "photo.jpg")
    with pytest.raises(DatasetError, match=r"photo\.jpg.*photo\.png"):
        ImageFolder(tmp_path, size=8)


def test_image_folder_extensions_are_case_insensitive_and_others_skipped(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "b.png", 8, 8, seed=0)
    Image.open(tmp_path / "b.png").save(tmp_path / "A.JPG", format="JPEG")
    Image.open(tmp_path / "b.png").save(tmp_path / "c.TIFF", format="TIFF")
    write_noise_png(tmp_path / ".hidden.png", 8, 8, seed=1)
    (tmp_path / "MANIFEST.tsv").write_text("file\n")
    (tmp_path / "sub").mkdir()
    write_noise_png(tmp_path / "sub" / "d.png", 8, 8, seed=2)
    assert ImageFolder(tmp_path, size=8).ids == ["A", "b", "c"]


def test_image_folder_bad_size_or_channels_errors(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "a.png", 8, 8, seed=0)
    with pytest.raises(DatasetError, match="channels"):
        ImageFolder(tmp_path, size=8, channels=2)
    with pytest.raises(DatasetError, match="size"):
        ImageFolder(tmp_path, size=0)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_load_dataset_skimage_natural_offline(no_network: None) -> None:
    colour = load_dataset("skimage-natural", size=32)
    assert colour.ids == ["astronaut", "chelsea", "coffee", "motorcycle", "rocket"]
    images = torch.cat([images for _, images in colour.batches(8)])
    assert images.shape == (5, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    grey = load_dataset("skimage-natural", size=32, channels=1)
    # Grey photos join only for channels=1, after the colour ones, so the first five ids never change.
    assert grey.ids == colour.ids + ["camera", "coins", "moon"]
    assert torch.cat([images for _, images in grey.batches(8)]).shape == (8, 1, 32, 32)
    assert load_dataset("skimage-natural", size=32, n_images=2).ids == ["astronaut", "chelsea"]
    assert [i for i, _ in SKIMAGE_NATURAL_COLOUR + SKIMAGE_NATURAL_GREY] == grey.ids


def test_load_dataset_skimage_natural_matches_skimage_astronaut(no_network: None) -> None:
    from skimage import data as skimage_data

    _, image = load_dataset("skimage-natural", size=512, n_images=1)[0]
    torch.testing.assert_close(image, reference_tensor(skimage_data.astronaut()), rtol=0, atol=1e-6)


@needs_kodak
def test_load_dataset_folder_and_kodak24_alias() -> None:
    folder = load_dataset(f"folder:{KODAK}", size=8, n_images=2)
    alias = load_dataset("kodak24", size=8, n_images=2)
    assert folder.ids == alias.ids == ["kodim01", "kodim02"]
    assert alias.name == "kodak24"
    torch.testing.assert_close(folder[0][1], alias[0][1], rtol=0, atol=0)


def test_load_dataset_unknown_spec_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="did you mean 'kodak24'"):
        load_dataset("kodak", size=8)
    with pytest.raises(DatasetError, match="did you mean 'skimage-natural'"):
        load_dataset("skimage_natural", size=8)
    with pytest.raises(DatasetError, match=f"did you mean 'folder:{tmp_path}'"):
        load_dataset(str(tmp_path), size=8)
    with pytest.raises(DatasetError, match="names no folder"):
        load_dataset("folder:", size=8)


def test_available_lists_every_spec() -> None:
    specs = [spec for spec, _ in available()]
    assert specs == ["skimage-natural", "folder:<path>", "kodak24"]
    assert all(description for _, description in available())


@pytest.fixture(scope="module")
def kodak_crops() -> RandomCrops:
    if not KODAK.is_dir():
        pytest.skip(f"Kodak photos not found at {KODAK}")
    return RandomCrops(KODAK, size=32, seed=0, n_images=3)


@needs_kodak
def test_random_crops_deterministic_given_seed() -> None:
    first = RandomCrops(KODAK, size=24, seed=7, n_images=3)
    second = RandomCrops(KODAK, size=24, seed=7, n_images=3)
    other = RandomCrops(KODAK, size=24, seed=8, n_images=3)
    a, b, c = first.batch(6), second.batch(6), other.batch(6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.shape == (6, 3, 24, 24)


def test_random_crops_scales_are_log_uniform(kodak_crops: RandomCrops) -> None:
    kodak_crops.generator.manual_seed(0)
    sides = [kodak_crops.draw_params().side for _ in range(600)]
    assert min(sides) >= 32 and max(sides) <= 500
    assert min(sides) < 40 and max(sides) > 450
    # Log-uniform on [32, 500] puts half the draws below the geometric mean sqrt(32 * 500) ~ 126;
    # uniform sides would put only ~20% there.
    below = sum(side < math.sqrt(32 * 500) for side in sides) / len(sides)
    assert 0.4 < below < 0.6


def test_random_crops_flip_and_crop_match_pil_reference(kodak_crops: RandomCrops) -> None:
    kodak_crops.generator.manual_seed(1)
    flips = [kodak_crops.draw_params().flip for _ in range(100)]
    assert 30 < sum(flips) < 70
    params = CropParams(image_index=1, left=100, top=50, side=200, flip=False)
    plain = kodak_crops.render(params)
    pixels = np.asarray(Image.open(KODAK / "kodim02.png").convert("RGB"))[50:250, 100:300]
    expected = Image.fromarray(pixels).resize((32, 32), Image.BICUBIC, reducing_gap=None)
    torch.testing.assert_close(plain, reference_tensor(np.asarray(expected)), rtol=0, atol=1e-6)
    flipped = kodak_crops.render(CropParams(image_index=1, left=100, top=50, side=200, flip=True))
    torch.testing.assert_close(flipped, plain.flip(-1), rtol=0, atol=0)
    assert not torch.equal(flipped, plain)


def test_random_crops_iteration_in_range(kodak_crops: RandomCrops) -> None:
    stream = iter(kodak_crops)
    crops = torch.stack([next(stream) for _ in range(8)])
    assert crops.shape == (8, 3, 32, 32) and crops.dtype == torch.float32
    assert crops.min() >= -1 and crops.max() <= 1
    image, params = kodak_crops.sample()
    assert image.shape == (3, 32, 32) and 0 <= params.image_index < 3


def test_random_crops_grayscale_and_small_images(tmp_path: Path) -> None:
    # A 20 x 30 image is smaller than the crop size, so every crop is the whole short side, upsampled.
    write_noise_png(tmp_path / "small.png", 30, 20, seed=0)
    crops = RandomCrops(tmp_path, size=24, channels=1, seed=0)
    for _ in range(5):
        params = crops.draw_params()
        assert params.side == 20 and 0 <= params.left <= 10 and params.top == 0
    assert crops.batch(2).shape == (2, 1, 24, 24)


def test_manifest_sha256_tracks_image_files(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "a.png", 8, 8, seed=0)
    write_noise_png(tmp_path / "b.png", 8, 8, seed=1)
    lines = "".join(
        f"{hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}  {name}\n" for name in ("a.png", "b.png")
    )
    original = manifest_sha256(tmp_path)
    assert original == hashlib.sha256(lines.encode()).hexdigest()
    (tmp_path / "notes.txt").write_text("ignored")
    assert manifest_sha256(tmp_path) == original
    write_noise_png(tmp_path / "b.png", 8, 8, seed=2)
    changed = manifest_sha256(tmp_path)
    assert changed != original
    (tmp_path / "b.png").rename(tmp_path / "c.png")
    assert manifest_sha256(tmp_path) not in (original, changed)


def test_image_folder_sixteen_bit_grey_is_scaled_to_full_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    _, grey = ImageFolder(tmp_path, size=16, channels=1)[0]
    torch.testing.assert_close(grey, reference_tensor(np.round(ramp / 257).astype(np.uint8)), rtol=0, atol=1e-6)
    _, colour = ImageFolder(tmp_path, size=16, channels=3)[0]
    torch.testing.assert_close(colour, grey.expand(3, -1, -1), rtol=0, atol=0)


# ----- folder: spec options: the papers' ground-truth protocols, sub-folders and file lists --------------
# References below are written from each paper's loader (torchvision / PIL / numpy calls as their code makes
# them), independently of bench.data, and compared as 8-bit pixels with exact equality: every protocol ends
# in an 8-bit image and v / 127.5 - 1 is inverted exactly by round((x + 1) * 127.5).

IMAGENET = SHARED_DATA / "imagenet-val8"
needs_imagenet = pytest.mark.skipif(not IMAGENET.is_dir(), reason=f"ImageNet photos not found at {IMAGENET}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [-1, 1] from v / 127.5 - 1 -> the 8-bit v as (H, W, C) uint8."""
    return np.round((image.numpy().astype(np.float64) + 1.0) * 127.5).astype(np.uint8).transpose(1, 2, 0)


def reference_ddrm(image: Image.Image, size: int) -> np.ndarray:
    """DDRM/DDNM imagenet_subset.py: CenterCropLongEdge (= center_crop(img, min(img.size))), Resize(size)."""
    from torchvision import transforms
    from torchvision.transforms import functional

    return np.asarray(transforms.Resize(size)(functional.center_crop(image, min(image.size))))


def reference_adm(image: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion center_crop_arr, from its definition: BOX halving, bicubic short side, numpy slice."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    arr = np.array(image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def reference_ddc(image: Image.Image, size: int) -> np.ndarray:
    """DDC guided_diffusion/datasets: torchvision ImageFolder + Resize([size, size]), no crop."""
    from torchvision import transforms

    return np.asarray(transforms.Resize([size, size])(image))


REFERENCES = {"ddrm": reference_ddrm, "adm": reference_adm, "ddc": reference_ddc}


@pytest.fixture(scope="module")
def odd_margins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Odd-sized images whose square crops have odd margins in both orientations and both residues mod 4:
    real 500 x 333 (margin 167) and 333 x 498 (165) crops of ImageNet photos, noise 333 x 500 and 498 x 333."""
    if not IMAGENET.is_dir():
        pytest.skip(f"ImageNet photos not found at {IMAGENET}")
    folder = tmp_path_factory.mktemp("odd")
    wide = np.asarray(Image.open(IMAGENET / "ILSVRC2012_val_00001185.JPEG").convert("RGB"))  # 500 x 375
    tall = np.asarray(Image.open(IMAGENET / "ILSVRC2012_val_00031751.JPEG").convert("RGB"))  # 375 x 500
    Image.fromarray(wide[:333]).save(folder / "real_wide.png")
    Image.fromarray(tall[:498, :333]).save(folder / "real_tall.png")
    write_noise_png(folder / "noise_tall.png", 333, 500, seed=3)
    write_noise_png(folder / "noise_wide.png", 498, 333, seed=4)
    return folder


@needs_imagenet
@pytest.mark.parametrize("protocol", sorted(REFERENCES))
def test_protocol_matches_papers_loader_on_imagenet_photos(protocol: str) -> None:
    # The eight photos are 500x375, 486x500, 500x476, 283x400, 375x500, 500x500, 396x500 and 1024x768 (the
    # one adm halves with BOX first at 256, as 768 >= 512).
    dataset = load_dataset(f"folder:{IMAGENET}?protocol={protocol}", size=256)
    assert dataset.ids == sorted(p.stem for p in IMAGENET.glob("*.JPEG"))
    for (image_id, image), path in zip(dataset, dataset.paths, strict=True):
        expected = REFERENCES[protocol](Image.open(path).convert("RGB"), 256)
        np.testing.assert_array_equal(to_uint8(image), expected, err_msg=f"{protocol} {image_id}")


@pytest.mark.parametrize("protocol", sorted(REFERENCES))
@pytest.mark.parametrize("size", [64, 256])
def test_protocol_matches_papers_loader_on_odd_margins(odd_margins: Path, protocol: str, size: int) -> None:
    dataset = ImageFolder(odd_margins, size=size, protocol=protocol)
    assert dataset.ids == ["noise_tall", "noise_wide", "real_tall", "real_wide"]
    for (image_id, image), path in zip(dataset, dataset.paths, strict=True):
        expected = REFERENCES[protocol](Image.open(path).convert("RGB"), size)
        np.testing.assert_array_equal(to_uint8(image), expected, err_msg=f"{protocol} {image_id} at {size}")


def test_protocol_crop_offsets_follow_each_papers_rounding(tmp_path: Path) -> None:
    # Each pixel holds its column (or row) index, and size = the short side so nothing is resampled: the
    # first column served is the crop offset itself.
    for width, height in ((500, 333), (498, 333), (333, 500), (333, 498)):
        ramp = np.arange(max(width, height), dtype=np.uint8)
        pixels = np.broadcast_to(ramp[:width] if width > height else ramp[:height, None], (height, width))
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp_path / "ramp.png")
        margin = abs(width - height)
        first = {}
        for protocol in ("ours", "ddrm", "adm"):
            image = to_uint8(ImageFolder(tmp_path, size=333, channels=1, protocol=protocol)[0][1])[:, :, 0]
            first[protocol] = int(image[0, 0])
        # torchvision's int(round(m / 2.0)) rounds halves to even: 167 -> 84 (up), 165 -> 82 (down).
        assert first == {"ours": margin // 2, "ddrm": 84 if margin == 167 else 82, "adm": margin // 2}


def test_protocol_ddrm_differs_from_floor_offset_when_margin_is_3_mod_4(odd_margins: Path) -> None:
    # Guards the reference test above against a reference that rounds like ours: on a 500 x 333 photo the
    # one-column shift changes the image.
    ours = ImageFolder(odd_margins, size=333, protocol="ours")[3][1]
    ddrm = ImageFolder(odd_margins, size=333, protocol="ddrm")[3][1]
    torch.testing.assert_close(ddrm[:, :, :-1], ours[:, :, 1:], rtol=0, atol=0)
    assert not torch.equal(ddrm, ours)


def test_protocol_dps_uses_pixels_as_they_are(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "a.png", 32, 32, seed=0)
    _, image = load_dataset(f"folder:{tmp_path}?protocol=dps", size=32)[0]
    np.testing.assert_array_equal(to_uint8(image), np.asarray(Image.open(tmp_path / "a.png")))
    write_noise_png(tmp_path / "b.png", 32, 24, seed=1)
    with pytest.raises(DatasetError, match=r"1 of 2 are not 32x32.*b\.png \(32x24\).*protocol=ddc"):
        load_dataset(f"folder:{tmp_path}?protocol=dps", size=32)


def test_protocol_papers_ignore_exif_orientation(tmp_path: Path) -> None:
    from bench.data import read_image

    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "tagged.png", exif=exif)
    assert read_image(tmp_path / "tagged.png").size == (20, 30)
    assert read_image(tmp_path / "tagged.png", exif_transpose=False).size == (30, 20)
    _, image = ImageFolder(tmp_path, size=16, protocol="ddc")[0]
    np.testing.assert_array_equal(to_uint8(image), reference_ddc(Image.fromarray(pixels), 16))


@needs_kodak
def test_folder_default_names_and_ids_unchanged() -> None:
    # Result keys hash the dataset name and image ids: the default spec keeps both byte for byte, and
    # spelling out the defaults gives the same name.
    for spec in (f"folder:{KODAK}", f"folder:{KODAK}?protocol=ours&recursive=0", f"folder: {KODAK} "):
        dataset = load_dataset(spec, size=8, n_images=2)
        assert dataset.name == f"folder:{KODAK}"
        assert dataset.ids == ["kodim01", "kodim02"]
        assert dataset.describe()["preprocessing"] == (
            "center square crop, PIL bicubic resize (reducing_gap=None), 8-bit, v/127.5-1"
        )
    assert load_dataset("kodak24", size=8).name == "kodak24"
    assert load_dataset(f"folder:{KODAK}?protocol=ddrm", size=8).name == f"folder:{KODAK}?protocol=ddrm"


def test_folder_path_with_question_mark_still_works(tmp_path: Path) -> None:
    folder = tmp_path / "what?protocol=ddrm"
    folder.mkdir()
    write_noise_png(folder / "a.png", 8, 8, seed=0)
    dataset = load_dataset(f"folder:{folder}", size=8)
    assert dataset.name == f"folder:{folder}" and dataset.protocol == "ours"


def test_folder_recursive_ids_are_relative_paths(tmp_path: Path) -> None:
    for relative in ("a.png", "sub/b.png", "sub/deeper/c.JPG", "z/a.png", ".hidden/d.png", "sub/.e.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        write_noise_png(tmp_path / relative, 8, 8, seed=len(relative))
    assert load_dataset(f"folder:{tmp_path}", size=8).ids == ["a"]
    nested = load_dataset(f"folder:{tmp_path}?recursive=1", size=8)
    assert nested.ids == ["a", "sub__b", "sub__deeper__c", "z__a"]
    relative = [p.relative_to(tmp_path).as_posix() for p in nested.paths]
    assert relative == ["a.png", "sub/b.png", "sub/deeper/c.JPG", "z/a.png"]
    assert nested.name == f"folder:{tmp_path}?recursive=1"
    assert load_dataset(f"folder:{tmp_path}?recursive=0", size=8).name == f"folder:{tmp_path}"
    (tmp_path / "sub__b.png").write_bytes((tmp_path / "a.png").read_bytes())
    with pytest.raises(DatasetError, match="share the image id 'sub__b'"):
        load_dataset(f"folder:{tmp_path}?recursive=1", size=8)


@pytest.fixture
def imagenet_layout(tmp_path: Path) -> Path:
    """ImageNet's val layout (class folders) holding links to the eight real photos."""
    if not IMAGENET.is_dir():
        pytest.skip(f"ImageNet photos not found at {IMAGENET}")
    root = tmp_path / "val"
    for index, photo in enumerate(sorted(IMAGENET.glob("*.JPEG"))):
        (root / f"n0{index % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"n0{index % 3}" / photo.name).symlink_to(photo)
    return root


def test_folder_file_list_selects_and_orders(imagenet_layout: Path, tmp_path: Path) -> None:
    listing = tmp_path / "imagenet_val_1k.txt"
    # DGP/DDRM's format: name and class label; DDNM's copy has trailing spaces; DDRM's loader appends an
    # extension to extension-less names; a name may carry its class folder.
    listing.write_text(
        "# the 1k split\n"
        "ILSVRC2012_val_00048380.JPEG 7\n"
        "ILSVRC2012_val_00001277.JPEG 1 \n"
        "\n"
        "n00/ILSVRC2012_val_00001185.JPEG 0\n"
        "ILSVRC2012_val_00031751 2\n"
    )
    dataset = load_dataset(f"folder:{imagenet_layout}?protocol=ddrm&list={listing}", size=64)
    assert dataset.ids == [
        "ILSVRC2012_val_00048380",
        "ILSVRC2012_val_00001277",
        "n00__ILSVRC2012_val_00001185",
        "ILSVRC2012_val_00031751",
    ]
    assert [p.name for p in dataset.paths] == [
        "ILSVRC2012_val_00048380.JPEG",
        "ILSVRC2012_val_00001277.JPEG",
        "ILSVRC2012_val_00001185.JPEG",
        "ILSVRC2012_val_00031751.JPEG",
    ]
    assert dataset.name == f"folder:{imagenet_layout}?protocol=ddrm&list={listing}"
    expected = reference_ddrm(Image.open(IMAGENET / "ILSVRC2012_val_00048380.JPEG").convert("RGB"), 64)
    np.testing.assert_array_equal(to_uint8(dataset[0][1]), expected)
    # recursive is implied by a list, so it does not change the name; n_images keeps the list's first N.
    again = load_dataset(f"folder:{imagenet_layout}?list={listing}&recursive=1", size=64, n_images=2)
    assert again.name == f"folder:{imagenet_layout}?list={listing}"
    assert again.ids == dataset.ids[:2]


def test_folder_file_list_missing_names_error(imagenet_layout: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    names = ["ILSVRC2012_val_00001185.JPEG"] + [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 8)]
    listing.write_text("".join(f"{name} {label}\n" for label, name in enumerate(names)))
    with pytest.raises(DatasetError, match=r"7 of the 8 images .*00000001.*00000005\.JPEG'\]") as error:
        load_dataset(f"folder:{imagenet_layout}?list={listing}", size=8)
    assert "00000006" not in str(error.value)
    listing.write_text("ILSVRC2012_val_00001185.JPEG 0\nILSVRC2012_val_00001185.JPEG 1\n")
    with pytest.raises(DatasetError, match="twice.*lines 1 and 2"):
        load_dataset(f"folder:{imagenet_layout}?list={listing}", size=8)
    (imagenet_layout / "n01" / "ILSVRC2012_val_00001185.JPEG").symlink_to(IMAGENET / "ILSVRC2012_val_00001185.JPEG")
    listing.write_text("ILSVRC2012_val_00001185.JPEG 0\n")
    with pytest.raises(DatasetError, match="matches 2 files.*sub-folder"):
        load_dataset(f"folder:{imagenet_layout}?list={listing}", size=8)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"folder:{imagenet_layout}?list={tmp_path / 'nowhere.txt'}", size=8)


def test_folder_spec_option_errors(tmp_path: Path) -> None:
    write_noise_png(tmp_path / "a.png", 8, 8, seed=0)
    with pytest.raises(DatasetError, match="unknown ground-truth protocol 'ddrn'; did you mean 'ddrm'"):
        load_dataset(f"folder:{tmp_path}?protocol=ddrn", size=8)
    with pytest.raises(DatasetError, match="unknown option 'recursve'.*did you mean 'recursive'"):
        load_dataset(f"folder:{tmp_path}?recursve=1", size=8)
    with pytest.raises(DatasetError, match="recursive='maybe'.*1 or 0"):
        load_dataset(f"folder:{tmp_path}?recursive=maybe", size=8)
    with pytest.raises(DatasetError, match="bad option 'ddrm'"):
        load_dataset(f"folder:{tmp_path}?ddrm", size=8)
    with pytest.raises(DatasetError, match="takes no options.*folder:.*kodak24\\?protocol=adm"):
        load_dataset("kodak24?protocol=adm", size=8)
    assert "protocol=<ours|ddrm|adm|ddc|dps>" in dict(available())["folder:<path>"]
