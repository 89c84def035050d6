"""Model presets: plain dicts of model-section defaults that an experiment's fields override."""

PRESETS: dict[str, dict] = {
    # A 0.8M-parameter LLaVA that learns the synthetic task on a CPU in minutes. Patch 16 gives
    # 16 image tokens. Measured on the quickstart (2 CPU cores, 2026-12-04, seed 0, the same steps):
    # patch 8 (64 tokens) trained stage 1 at about half the samples/s, ended it at loss 0.061
    # against 0.0066 and scored 1.365 significant errors per report against 0.195.
    "tiny": {
        "vision": {"kind": "clip", "image_size": 64, "patch_size": 16, "hidden_size": 96, "layers": 2,
                   "heads": 4, "intermediate_size": 384, "select_layer": -1, "frozen": False},
        "projector": "mlp2x_gelu",
        "language": {"hidden_size": 128, "layers": 2, "heads": 4, "intermediate_size": 512,
                     "tie_embeddings": True},
    },
    # The LLaVA-Rad shapes: BiomedCLIP-CXR (a DINOv2 ViT-B/14 with LayerScale, 518 px, 37x37 patch
    # tokens of width 768, second-to-last block; its open_clip release converts to a transformers
    # Dinov2 folder with `radlab import open-clip-vision`), mlp2x_gelu into Vicuna-7B v1.5 (4096
    # wide, 32 layers).
    "llava-rad-7b": {
        "vision": {"kind": "dinov2", "name": "biomedclip_cxr_518", "image_size": 518, "patch_size": 14,
                   "hidden_size": 768, "layers": 12, "heads": 12, "intermediate_size": 3072,
                   "select_layer": -2, "frozen": True},
        "projector": "mlp2x_gelu",
        "language": {"path": "lmsys/vicuna-7b-v1.5", "vocab_size": 32000, "hidden_size": 4096, "layers": 32,
                     "heads": 32, "intermediate_size": 11008, "tie_embeddings": False},
    },
}
