import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radlab.formats.images import ImageError, decode_image, load_image, to_tensor


def test_real_dicom_radiograph_monochrome1_is_inverted():
    path = get_testdata_file("RG1_UNCR.dcm")  # a PA chest radiograph shipped by pydicom-data
    raw = pydicom.dcmread(path)
    assert raw.PhotometricInterpretation == "MONOCHROME1"
    image = load_image(path)
    assert image.mode == "L" and image.size == (raw.Columns, raw.Rows)
    pixels = raw.pixel_array.astype(float)
    brightest_raw = np.unravel_index(pixels.argmax(), pixels.shape)
    assert np.asarray(image)[brightest_raw] < 30  # the stored maximum is displayed dark
    tensor = to_tensor(image, 64)
    assert tensor.shape == (3, 64, 64)


def test_png_and_jpeg_decode_and_pad_to_square():
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 80), 255, np.uint8)).save(buf, fmt)
        tensor = to_tensor(decode_image(buf.getvalue(), f"x.{fmt}"), 32)
        assert tensor.shape == (3, 32, 32)
        # Padded rows at the top and bottom are black; the middle is the white image.
        assert tensor[0, 0, 16] < tensor[0, 16, 16]


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
