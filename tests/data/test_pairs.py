from radlab.data.pairs import collate_pairs, encode_report


def test_long_reports_are_cut_to_the_context_and_counted(tokenizer):
    text = "There is a small left pleural effusion. " * 20
    ids, truncated = encode_report(tokenizer, text, 16)
    assert truncated and len(ids) == 16 and ids[-1] == tokenizer.eos_token_id
    ids, truncated = encode_report(tokenizer, "No pneumothorax.", 16)
    assert not truncated and ids[-1] == tokenizer.eos_token_id


def test_unreadable_images_are_dropped_and_counted():
    import torch

    item = {"pixel_values": torch.zeros(3, 4, 4), "input_ids": [5, 6, 2], "truncated": True, "index": 3}
    batch = collate_pairs([None, item, {**item, "input_ids": [7, 2], "truncated": False, "index": 4}], pad_id=0)
    assert batch["skipped"] == 1 and batch["truncated"] == 1
    assert batch["input_ids"].tolist() == [[5, 6, 2], [7, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["index"].tolist() == [3, 4]
