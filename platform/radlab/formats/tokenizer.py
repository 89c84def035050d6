"""The tokenizer: a pretrained one named in the config, or a byte-level BPE trained on the
dataset's own reports and prompts when none is given (the offline default). transformers is
imported where it is used: Ray Train's controller unpickles a stage's TokenizerFiles."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from radlab.errors import RadlabError
from radlab.formats.prompts import IMAGE_TOKEN, VICUNA_SYSTEM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (plus the prompt templates) and save it to `out_dir`
    (with save_tokenizer: a folder already there is kept)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS.values()) + [IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The chat template's fixed text is repeated so that BPE merges it into few tokens.
    template = [VICUNA_SYSTEM + " USER: ASSISTANT:"] * max(1, len(texts) // 20)
    bpe.train_from_iterator(texts + template, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIALS,
                                        additional_special_tokens=[IMAGE_TOKEN])
    save_tokenizer(tokenizer, out_dir)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save into a process-unique folder beside `out_dir`, then rename it there: processes that
    prepare the same tokenizer at once (sweep trials) never see each other's half-written files.
    A folder already there (another process's, of the same texts) is kept as it is, so a process
    reading it is never left without it; one without tokenizer_config.json is refused."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tokenizer.save_pretrained(tmp)
        if not out_dir.exists():
            tmp.rename(out_dir)
    except OSError:
        if not out_dir.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (out_dir / "tokenizer_config.json").is_file():
        raise RadlabError(f"{out_dir} holds no tokenizer_config.json (a save that was interrupted): remove the folder")


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder or hub id; make sure it knows <image> and has a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer folder's files, carried to the training workers inside their job, so that a worker
    on any node reads the driver's tokenizer without storage shared with the driver (ray.storage_path
    may be s3:// or abfss://). A few MB at most: Vicuna's is 2."""
    files: dict[str, bytes]

    @classmethod
    def read(cls, folder: str | Path) -> TokenizerFiles:
        return cls({path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()})

    def load(self) -> PreTrainedTokenizerFast:
        with tempfile.TemporaryDirectory(prefix="radlab-tokenizer-") as folder:
            for name, data in self.files.items():
                (Path(folder) / name).write_bytes(data)
            return load_tokenizer(folder)
