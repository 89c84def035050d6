import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radlab.data.images import ImageError, decode_image, load_image, to_tensor


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
