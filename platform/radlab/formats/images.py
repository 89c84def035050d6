"""Loading radiographs (PNG, JPEG, DICOM) and turning them into an encoder's input tensor."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from radlab.errors import RadlabError

# CLIP's normalisation, used by CLIP, BiomedCLIP and the tiny tower alike.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
MAX_PIXELS = 50_000_000


class ImageError(RadlabError, ValueError):
    """An image that cannot be decoded; the message names the file or request."""


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _dicom_to_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """8-bit grayscale from a DICOM of any bit depth: the modality LUT (rescale slope/intercept),
    then the VOI LUT or window the file carries (the display the radiologist saw), scaled to the
    window's range; MONOCHROME1 (air bright) inverted to the usual display. The size in the header
    is checked before any pixel is decoded (a small compressed file can hold a huge image), and of
    a multi-frame file only the first frame is decoded."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        if rows * columns * int(ds.get("SamplesPerPixel", 1) or 1) > max_pixels:
            raise ImageError(f"{name}: {columns}x{rows} exceeds {max_pixels} pixels")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)
        pixels = ds.pixel_array
        if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:  # a decoder that ignored the index
            pixels = pixels[0]
        pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float32)
    except ImageError:
        raise
    except Exception as err:  # pydicom raises many types for broken files
        raise ImageError(f"{name}: DICOM without readable pixel data ({type(err).__name__}: {err})") from None
    lo, hi = float(pixels.min()), float(pixels.max())
    pixels = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Image.fromarray((pixels * 255).astype(np.uint8), mode="L")


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes of a PNG, JPEG or DICOM into a grayscale PIL image of at most `max_pixels`."""
    if _is_dicom(data):
        return _dicom_to_image(data, name, max_pixels)
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ImageError(f"{name}: {image.width}x{image.height} exceeds {max_pixels} pixels")
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: too many pixels ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageError(f"{name}: not a readable PNG, JPEG or DICOM image ({err})") from None
    return image.convert("L")


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err.strerror})") from None
    return decode_image(data, str(path))


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a square (keeping the aspect ratio, as LLaVA-Rad does) and resize: (size, size) uint8."""
    w, h = image.size
    side = max(w, h)
    square = Image.new("L", (side, side), 0)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def normalise(pixels: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """(size, size) uint8 -> the encoder's normalised (3, size, size) input."""
    tensor = torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(0).expand(3, -1, -1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def to_tensor(image: Image.Image, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    return normalise(square_pixels(image, size), mean, std)
