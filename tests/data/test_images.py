import io
import json

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from radlab.formats.images import SIGLIP_MEAN, ImageError, ImageTransform, decode_image, load_image


def test_real_dicom_radiograph_monochrome1_is_inverted():
    path = get_testdata_file("RG1_UNCR.dcm")  # a PA chest radiograph shipped by pydicom-data
    raw = pydicom.dcmread(path)
    assert raw.PhotometricInterpretation == "MONOCHROME1"
    image = load_image(path)
    assert image.mode == "L" and image.size == (raw.Columns, raw.Rows)
    pixels = raw.pixel_array.astype(float)
    brightest_raw = np.unravel_index(pixels.argmax(), pixels.shape)
    assert np.asarray(image)[brightest_raw] < 30  # the stored maximum is displayed dark
    tensor = ImageTransform(64)(image)
    assert tensor.shape == (3, 64, 64)


def test_png_and_jpeg_decode_and_pad_to_square():
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 80), 255, np.uint8)).save(buf, fmt)
        tensor = ImageTransform(32, resize="pad")(decode_image(buf.getvalue(), f"x.{fmt}"))
        assert tensor.shape == (3, 32, 32)
        # Padded rows at the top and bottom are black; the middle is the white image.
        assert tensor[0, 0, 16] < tensor[0, 16, 16]


def _radiograph(width: int, height: int) -> Image.Image:
    """A grayscale image with structure everywhere, so that any shift or blur shows."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(((x * 7 + y * 13 + (x * y) % 31) % 256).astype(np.uint8), mode="L")


@pytest.mark.parametrize("width, height", [(96, 128), (200, 120)])
@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_the_transform_is_transformers_clip_processor_on_non_square_images(width, height, resize, tmp_path):
    """Against transformers' own CLIP image processor, built from the preprocessor_config.json the
    transform writes: the short side resized to the size (bicubic) and the centre kept, or both
    sides resized; each channel normalised by the tower's mean and std (SigLIP's here)."""
    from transformers import AutoImageProcessor

    transform = ImageTransform(32, SIGLIP_MEAN, (0.25, 0.5, 0.75), resize)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(transform.processor_config()))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = _radiograph(width, height)
    theirs = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(transform(image), theirs, atol=1e-5)
    assert ImageTransform.from_processor_config(transform.processor_config(), 32) == transform


def test_the_centre_crop_rounds_as_torchvision_does(tmp_path):
    """open_clip's CenterCrop (torchvision) puts the crop at round((excess) / 2), half to even: with
    one spare row (33 x 32 after resizing a 66 x 64 image) it starts at row 0, with three at row 2.
    transformers' PIL image processor starts at excess // 2, one row off for the three (row 1): the
    limit of an export's processor that the README states."""
    from transformers import AutoImageProcessor

    transform = ImageTransform(32)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(transform.processor_config()))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    for height, top, theirs in ((66, 0, 0), (70, 2, 1)):
        image = _radiograph(64, height)
        resized = np.asarray(image.resize((32, int(32 * height / 64)), Image.Resampling.BICUBIC))
        assert np.array_equal(transform.pixels(image), resized[top:top + 32])
        hf = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert torch.allclose(hf, transform.normalise(resized[theirs:theirs + 32]), atol=1e-5)


def test_undecodable_inputs_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="bad.png: not a readable"):
        decode_image(b"not an image at all", "bad.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, "PNG")
    with pytest.raises(ImageError, match="cut.png"):
        decode_image(buf.getvalue()[:60], "cut.png")
    with pytest.raises(ImageError, match="absent.png: cannot be read"):
        load_image(tmp_path / "absent.png")
    header = b"\0" * 128 + b"DICM" + b"\0" * 64
    with pytest.raises(ImageError, match="scan.dcm: DICOM without readable pixel data"):
        decode_image(header, "scan.dcm")


def _dicom_bytes(pixels: np.ndarray, **elements) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_16_bit_is_shown_through_its_window():
    gradient = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    plain = np.asarray(decode_image(_dicom_bytes(gradient), "plain.dcm"), dtype=float)
    windowed = np.asarray(decode_image(_dicom_bytes(gradient, WindowCenter=2048, WindowWidth=1024),
                                       "windowed.dcm"), dtype=float)
    # Without a window the whole 12-bit range spreads over 0-255; with one, everything below
    # 1536 is black, above 2560 white, and the window's range gets all the contrast.
    assert plain[0, 0] == 0 and plain[0, -1] == 255 and 100 < plain[0, 32] < 160
    assert (windowed[0, :20] == 0).all() and (windowed[0, -20:] == 255).all()
    inside = windowed[0, 26:38]
    assert inside.max() - inside.min() > 2 * (plain[0, 26:38].max() - plain[0, 26:38].min())


def _rle_bomb(side: int = 12000) -> bytes:
    """A valid RLE Lossless DICOM of side x side 8-bit pixels, all zero: about 2.3 MB on disk."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

    full, rest = divmod(side, 128)
    row = b"\x81\x00" * full + (bytes([257 - rest, 0]) if rest else b"")  # runs of 128 (and the rest) zeros
    segment = row * side
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = RLELossless
    ds = FileDataset("bomb.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([header + segment])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_decompression_bomb_dicom_is_refused_before_decoding():
    import time
    import tracemalloc

    small = _rle_bomb(256)
    assert decode_image(small, "small.dcm").size == (256, 256)  # the same encoding decodes when small
    bomb = _rle_bomb()
    assert len(bomb) < 3_000_000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb.dcm: 12000x12000 exceeds 50000000 pixels"):
        decode_image(bomb, "bomb.dcm")
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 100_000_000
