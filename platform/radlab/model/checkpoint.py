"""radlab checkpoints: a folder a user can load back anywhere.

    config.json          the LlavaConfig: the architecture, so loading needs no weight paths
    radlab.json          format version, the model section, the LoRA block (if any), stage and step
    model.safetensors    every weight of the model (LoRA adapters unmerged, under peft's names); in a
                         stage's resume points (every checkpoint but its last) only the weights the
                         stage trains, the frozen rest being rebuilt as the stage began
    tokenizer/           the tokenizer, <image> included
    preprocessor_config.json  how an image becomes the tower's input (transformers' CLIPImageProcessor
                         keys: size, crop, mean, std), the one transform evaluation, serving and
                         export use
    train_state.pt       optimizer, scheduler and step (training checkpoints only)
    checksums.json       the sha256 of every other file, checked when a stage resumes from it

A folder is written beside its destination and renamed into place, so a reader never sees a
half-written checkpoint; one damaged later (a truncated copy, a bad disk) is found by its
checksums, and a resumed stage falls back to the newest intact checkpoint beside it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import LlavaConfig

from radlab.config import LoraConfig, ModelConfig
from radlab.formats.images import CLIP_MEAN, CLIP_STD, ImageTransform
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.build import ModelError, apply_lora, assemble, llava_config
from radlab.model.towers import PROCESSOR_FILE, image_transform

FORMAT = 1
META = "radlab.json"
CHECKSUMS = "checksums.json"
PARTIAL = "trainable_only"


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    model_config: ModelConfig
    lora: LoraConfig | None
    meta: dict
    transform: ImageTransform

    @property
    def template(self) -> str:
        """The prompt template the model was last trained on, which generation must use
        (checkpoints that do not record one were trained on LLaVA's chat)."""
        return self.meta.get("template", "vicuna_v1")


def save_checkpoint(dest: Path, model: torch.nn.Module, tokenizer, model_config: ModelConfig,
                    lora: LoraConfig | None, meta: dict, train_state: dict | None = None,
                    trainable_only: bool = False, transform: ImageTransform | None = None) -> Path:
    """Write a checkpoint folder. `trainable_only`: a resume point holding only the parameters that
    train (a LoRA stage of a 7B model: the adapters and the projector, not 13.5 GB). `transform`:
    the images' transform the model was trained with, where `model_config.vision` does not say it
    (an imported tower's own mean and std)."""
    transform = transform or image_transform(model_config.vision)
    with atomic_folder(dest, checksums=True) as tmp:
        if trainable_only:
            state = {k: p for k, p in model.named_parameters() if p.requires_grad}
            meta = {**meta, PARTIAL: True}
        else:
            state = model.state_dict()
        # Own copies of every tensor: DeepSpeed's ZeRO keeps parameters as views of flat buffers,
        # which safetensors refuses to save as they are.
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        llava_config(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_transform(tmp, transform)
        info = {"format": FORMAT, "model": model_config.model_dump(mode="json"),
                "lora": lora.model_dump(mode="json") if lora else None, **meta}
        (tmp / META).write_text(json.dumps(info, indent=2))
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
    return Path(dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: Path) -> None:
    """Raise ModelError naming the first file whose bytes differ from the checksums written with it
    (a checkpoint without checksums is taken as it is)."""
    path = Path(path)
    listed = path / CHECKSUMS
    if not listed.is_file():
        return
    for name, expected in json.loads(listed.read_text()).items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"{file}: missing from the checkpoint")
        if _sha256(file) != expected:
            raise ModelError(f"{file}: damaged (its sha256 differs from the one written with it)")


def newest_intact(path: Path) -> tuple[Path, list[str]]:
    """`path` if it verifies, else the newest checkpoint beside it that does (Ray Train keeps the
    last few side by side); and why each newer one was passed over. ModelError if none is intact."""
    path = Path(path)
    siblings = sorted((p for p in path.parent.glob("checkpoint_*") if p.is_dir() and p != path), reverse=True)
    problems = []
    for candidate in [path, *siblings]:
        try:
            verify_checkpoint(candidate)
            return candidate, problems
        except ModelError as err:
            problems.append(str(err))
    raise ModelError("no intact checkpoint to resume from: " + "; ".join(problems))


@contextmanager
def atomic_folder(dest: Path, checksums: bool = False) -> Iterator[Path]:
    """A temporary folder beside `dest`, renamed onto it when the block succeeds (with the sha256
    of every file in checksums.json if asked), removed if not. A folder already at `dest` is moved
    aside first and removed after; processes that write the same `dest` at once (sweep trials
    copying out a shared stage 0 encoder) each rename theirs in turn, and the last one stays."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if checksums:
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            (tmp / CHECKSUMS).write_text(json.dumps({str(p.relative_to(tmp)): _sha256(p) for p in files}, indent=1))
        aside = []
        while True:
            try:
                tmp.rename(dest)
                break
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
            try:
                dest.rename(old)
                aside.append(old)
            except FileNotFoundError:  # another process moved it aside first
                pass
        for old in aside:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_transform(folder: Path, transform: ImageTransform) -> None:
    (Path(folder) / PROCESSOR_FILE).write_text(json.dumps(transform.processor_config(), indent=2))


def read_transform(folder: Path, model_config: ModelConfig) -> tuple[ImageTransform, ModelConfig]:
    """The transform a checkpoint's model was trained with, and its model section saying so. A
    checkpoint written before radlab saved it padded its images to a square, with CLIP's mean/std."""
    processor = Path(folder) / PROCESSOR_FILE
    size = model_config.vision.image_size
    if processor.is_file():
        return ImageTransform.from_processor_config(json.loads(processor.read_text()), size), model_config
    vision = model_config.vision.model_copy(update={"resize": "pad"})
    return ImageTransform(size, CLIP_MEAN, CLIP_STD, "pad"), model_config.model_copy(update={"vision": vision})


def read_meta(path: Path) -> dict:
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise ModelError(f"{path}: not a radlab checkpoint (no {META})")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: checkpoint format {meta.get('format')}, this radlab reads {FORMAT}")
    return meta


def _as_yaml(value) -> str:
    """A setting's value as it is written in an experiment YAML (null, true, false; the rest as is)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def load_checkpoint(path: Path, expect: ModelConfig | None = None) -> Loaded:
    """Load a checkpoint folder; with `expect`, refuse one trained for a different model."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") == "encoder":
        raise ModelError(f"{path}: a stage 0 encoder, not a report model: name it in model.vision.path")
    if meta.get(PARTIAL):
        raise ModelError(f"{path}: a resume point of {meta.get('stage')} (step {meta.get('step')}) holding only the "
                         "weights it trains; use the stage's final checkpoint or the registered model")
    transform, model_config = read_transform(path, ModelConfig.model_validate(meta["model"]))
    if expect is not None:
        ours, theirs = expect.model_dump(), model_config.model_dump()
        diff = [(f"{section}.{key}", theirs[section][key], ours[section][key]) for section in ("vision", "language")
                for key in ours[section] if key not in ("path", "frozen") and ours[section][key] != theirs[section][key]]
        diff += [("projector", theirs["projector"], ours["projector"])] if ours["projector"] != theirs["projector"] else []
        if diff:
            said = "; ".join(f"model.{field} is {_as_yaml(saved)} in the checkpoint, {_as_yaml(wanted)} here"
                             for field, saved, wanted in diff)
            settings = ", ".join(f"model.{field}: {_as_yaml(saved)}" for field, saved, _ in diff)
            raise ModelError(f"{path}: checkpoint is of a different model ({said}): set {settings} to use it")
    tokenizer = load_tokenizer(path / "tokenizer")
    # The architecture comes from the saved LlavaConfig and the weights from the checkpoint, so
    # loading needs none of the original weight paths.
    model = assemble(LlavaConfig.from_pretrained(path), model_config.projector)
    lora = LoraConfig.model_validate(meta["lora"]) if meta.get("lora") else None
    if lora is not None:
        model = apply_lora(model, lora)
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise ModelError(f"{weights}: unreadable ({err}); verify it against {CHECKSUMS} or save it again") from None
    # Each weight in the dtype it was saved in: transformers builds the language model in its
    # config's dtype (Vicuna's float16) but LLaVA's lm_head in float32, which the saved float16
    # lm_head would be cast to, a model whose last layer no longer takes its own hidden states.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state and state[name].dtype != param.dtype:
                param.data = param.data.to(state[name].dtype)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not fit the model: {len(missing)} missing "
                         f"({missing[:2]}), {len(unexpected)} unexpected ({unexpected[:2]})")
    return Loaded(model, tokenizer, model_config, lora, meta, transform)


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Overlay a resume point's trained weights on the model its stage began from; ModelError if a
    saved weight has no parameter in the model or a different shape."""
    path = Path(path)
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise ModelError(f"{weights}: unreadable ({err}); verify it against {CHECKSUMS} or save it again") from None
    params = dict(model.named_parameters())
    misfit = [k for k, v in state.items() if k not in params or params[k].shape != v.shape]
    if misfit:
        raise ModelError(f"{path}: {len(misfit)} saved weights do not fit the stage's model ({misfit[:2]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def is_resume_point(path: Path) -> bool:
    return bool(read_meta(path).get(PARTIAL))


def load_train_state(path: Path) -> dict | None:
    state = Path(path) / "train_state.pt"
    return torch.load(state, weights_only=False) if state.is_file() else None
