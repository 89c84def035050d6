"""A damaged checkpoint is found by its checksums and passed over for the newest intact one."""

import pytest

from radlab.model.build import ModelError, build_model
from radlab.model.checkpoint import load_checkpoint, newest_intact, save_checkpoint, verify_checkpoint

from ..model.test_build import tiny


def _run_folder(tmp_path, tokenizer, steps=(10, 20, 30)):
    """Checkpoints side by side, named as Ray Train names them."""
    model = build_model(tiny(), tokenizer)
    folders = []
    for minute, step in enumerate(steps):
        folder = tmp_path / "run" / f"checkpoint_2026-11-30_05-2{minute}-00.000000"
        save_checkpoint(folder, model, tokenizer, tiny(), None, {"stage": "stage1", "step": step}, {"step": step})
        folders.append(folder)
    return folders


def test_a_truncated_latest_checkpoint_falls_back_to_the_newest_intact_one(tokenizer, tmp_path):
    oldest, middle, newest = _run_folder(tmp_path, tokenizer)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a half-copied file
    with pytest.raises(ModelError, match=r"checkpoint_2026-11-30_05-22-00.000000/model.safetensors: damaged"):
        verify_checkpoint(newest)
    chosen, passed_over = newest_intact(newest)
    assert chosen == middle and len(passed_over) == 1 and str(weights) in passed_over[0]
    assert load_checkpoint(chosen).meta["step"] == 20


def test_no_intact_checkpoint_is_an_error_naming_each(tokenizer, tmp_path):
    folders = _run_folder(tmp_path, tokenizer, steps=(10, 20))
    for folder in folders:
        (folder / "train_state.pt").unlink()
    with pytest.raises(ModelError, match=r"no intact checkpoint.*train_state.pt: missing.*train_state.pt: missing"):
        newest_intact(folders[-1])
