"""Builds a tiny RadGraph model folder in the StanfordAIMI RRG_scorers layout (config.json,
vocabulary/, weights.th) plus the small BERT it reads, with the `radgraph` package's own DyGIE
classes and seeded random weights (the real weights cannot be downloaded here).

Run by the RadGraph interpreter, not by radlab's:
    python radgraph_tiny_model.py OUT_DIR WORDS_FILE
OUT_DIR/radgraph holds the model, OUT_DIR/bert the BERT (its config.json names that folder).
"""

import json
import sys
from pathlib import Path

import torch
from radgraph.allennlp.data import Vocabulary
from radgraph.allennlp.modules import text_field_embedders, token_embedders
from radgraph.dygie.models import dygie
from transformers import BertConfig, BertModel, BertTokenizerFast

ENTITIES = ["ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"]
RELATIONS = ["suggestive_of", "located_at", "modify"]
MODEL_TYPE = "radgraph"


def build_bert(folder: Path, words: list[str]) -> None:
    folder.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The package tells special tokens apart by tokenizing "1" and "2": they need ids of their own.
    (folder / "vocab.txt").write_text("\n".join(specials + sorted(set(words) | set("0123456789"))) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)


def build_model(folder: Path, bert: Path) -> None:
    vocabulary = folder / "vocabulary"
    vocabulary.mkdir(parents=True)
    (vocabulary / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    (vocabulary / f"{MODEL_TYPE}__ner_labels.txt").write_text("\n" + "\n".join(ENTITIES) + "\n")
    (vocabulary / f"{MODEL_TYPE}__relation_labels.txt").write_text("\n".join(RELATIONS) + "\n")
    transformer = {"type": "pretrained_transformer_mismatched", "model_name": str(bert), "max_length": 512}
    model = {
        "type": "dygie",
        "embedder": {"token_embedders": {"bert": transformer}},
        "feature_size": 8, "max_span_width": 4, "target_task": "relation",
        "feedforward_params": {"num_layers": 1, "hidden_dims": 16, "dropout": 0.0},
        "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
        "modules": {"ner": {}, "relation": {"spans_per_word": 0.5},
                    "coref": {"spans_per_word": 0.3, "max_antecedents": 10},
                    "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                               "loss_weights": {"trigger": 1.0, "arguments": 0.5}}},
        "initializer": {}, "module_initializer": {},
    }
    config = {"dataset_reader": {"type": "dygie", "max_span_width": 4, "token_indexers": {"bert": transformer}},
              "model": model}
    (folder / "config.json").write_text(json.dumps(config, indent=1))

    torch.manual_seed(0)
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name=str(bert), max_length=512)})
    kwargs = {k: v for k, v in model.items() if k not in ("type", "embedder", "initializer", "module_initializer")}
    network = dygie.DyGIE(vocab=Vocabulary.from_files(vocabulary), embedder=embedder, **kwargs)
    torch.save(network.state_dict(), folder / "weights.th")


if __name__ == "__main__":
    out, words = Path(sys.argv[1]), Path(sys.argv[2]).read_text().split()
    build_bert(out / "bert", words)
    build_model(out / MODEL_TYPE, out / "bert")
