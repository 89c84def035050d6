"""Writes this folder's fixtures with timm itself, where timm is installed (it needs torchvision,
which the test machines lack): two tiny timm VisionTransformers in open_clip's layout
(`visual.trunk.*`), a plain one like BiomedCLIP's and a DINOv2-style one with LayerScale like
BiomedCLIP-CXR's, each with an input image batch and the features LLaVA-Rad takes from it, computed
by timm's own modules the way LLaVA-Rad runs them: patch_embed -> _pos_embed -> norm_pre -> blocks,
the output of the second-to-last block, CLS dropped.

    python tests/model/timm_towers/make.py [out folder]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

SIZE, PATCH, WIDTH, DEPTH, HEADS = 28, 14, 128, 3, 2  # 64-wide heads, as in every timm ViT


def tower(layer_scale: bool) -> VisionTransformer:
    model = VisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                              mlp_ratio=2.0, qkv_bias=True, init_values=1e-5 if layer_scale else None,
                              num_classes=0, global_pool="token")
    with torch.no_grad():  # weights far from their init, so that every one of them shows in the output
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


@torch.no_grad()
def llava_rad_features(trunk: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    x = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(pixels)))
    outputs = []
    for block in trunk.blocks:
        x = block(x)
        outputs.append(x)
    return outputs[-2][:, 1:]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    torch.manual_seed(0)
    for name, layer_scale in (("vit", False), ("dinov2", True)):
        trunk = tower(layer_scale)
        pixels = torch.randn(2, 3, SIZE, SIZE)
        save_file({f"visual.trunk.{k}": v.contiguous() for k, v in trunk.state_dict().items()},
                  str(out / f"{name}_trunk.safetensors"))
        save_file({"pixels": pixels, "features": llava_rad_features(trunk, pixels).contiguous()},
                  str(out / f"{name}_features.safetensors"))
    (out / "made_with.json").write_text(json.dumps({"timm": timm.__version__, "torch": torch.__version__,
                                                    "size": SIZE, "patch": PATCH, "width": WIDTH, "depth": DEPTH,
                                                    "heads": HEADS}, indent=1))


if __name__ == "__main__":
    main()
