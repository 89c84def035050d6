"""Loading radiographs (PNG, JPEG, DICOM) and turning them into an encoder's input tensor."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from radlab.errors import RadlabError

# CLIP's normalisation (open_clip's default, which BiomedCLIP keeps) and SigLIP's.
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


@dataclass(frozen=True)
class ImageTransform:
    """How an image becomes a tower's input: `crop` resizes the short side to `size` (bicubic) and
    takes the centre square, as open_clip's transform (LLaVA-Rad's) and transformers' CLIP processor
    do; `squash` resizes both sides to `size` (SigLIP's processor); `pad` first pads to a square with
    black, then resizes. Then each of the three channels is
    normalised by the tower's `mean` and `std`: radiographs are grayscale, so the channels differ
    only by their mean and std."""
    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: Literal["crop", "squash", "pad"] = "crop"

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The grayscale `image` resized as (size, size) uint8."""
        w, h = image.size
        if self.resize == "squash":
            return np.asarray(image.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.uint8)
        if self.resize == "pad":
            side = max(w, h)
            square = Image.new("L", (side, side), 0)
            square.paste(image, ((side - w) // 2, (side - h) // 2))
            return np.asarray(square.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.uint8)
        # the long side as torchvision and transformers compute it
        new_w, new_h = (self.size, int(self.size * h / w)) if w <= h else (int(self.size * w / h), self.size)
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        # torchvision's CenterCrop (open_clip's): the offset rounded half to even
        top, left = round((new_h - self.size) / 2.0), round((new_w - self.size) / 2.0)
        return np.asarray(resized.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        """(size, size) uint8 -> the normalised (3, size, size) float tensor."""
        tensor = torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(0).expand(3, -1, -1)
        return (tensor - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalise(self.pixels(image))

    def processor_config(self) -> dict:
        """As transformers' CLIPImageProcessor reads it (preprocessor_config.json); `pad` is radlab's
        own key, which transformers does not apply."""
        square = {"height": self.size, "width": self.size}
        config = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "resample": 3,
                  "size": square if self.resize == "squash" else {"shortest_edge": self.size},
                  "do_center_crop": self.resize != "squash", "crop_size": square, "do_rescale": True,
                  "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.mean),
                  "image_std": list(self.std), "do_convert_rgb": True}
        return config | ({"radlab_pad_to_square": True} if self.resize == "pad" else {})

    @staticmethod
    def resize_of(config: dict) -> str:
        """How a preprocessor_config.json resizes: crop (the short side, then the centre), squash
        (both sides, as SigLIP's processor) or pad (radlab's own key)."""
        if config.get("radlab_pad_to_square"):
            return "pad"
        size = config.get("size") or {}
        return "crop" if "shortest_edge" in size and config.get("do_center_crop", True) else "squash"

    @classmethod
    def from_processor_config(cls, config: dict, size: int) -> ImageTransform:
        """The transform of a preprocessor_config.json (a tower folder's or a checkpoint's) at `size`."""
        return cls(size, tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD)),
                   cls.resize_of(config))
