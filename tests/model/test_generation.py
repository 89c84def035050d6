import pytest
import torch

from radlab.config import ModelConfig
from radlab.model.build import build_model
from radlab.formats.batch import collate
from radlab.formats.prompts import encode_prompt, render_prompt
from radlab.model.generation import generate_batch, num_image_tokens, until_stop
from radlab.model.sampling import Sampling

HUMAN = "<image>\nDescribe the findings."


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_model(ModelConfig.model_validate({"preset": "tiny"}), tokenizer).eval()


@pytest.mark.parametrize("pieces, stops, shown", [
    ([" Heart", " size", " normal.", " \n"], [], ["Heart", " size", " normal."]),
    (["No eff", "usion. ST", "OP here"], ["STOP"], ["No eff", "usion."]),
    (["left ", "S", "T", "Ox"], ["STOP"], ["left", " STOx"]),  # a stop's beginning is held, then shown
    (["a\nb"], ["\n"], ["a"]),
    (["   ", "\n"], ["\n"], []),
])
def test_streamed_pieces_join_to_the_unstreamed_text(pieces, stops, shown):
    assert list(until_stop(pieces, stops)) == shown


def sample(model, tokenizer, pixels, sampling, seed=3):
    torch.manual_seed(seed)
    return generate_batch(model, tokenizer, pixels, [HUMAN] * len(pixels), "vicuna_v1", sampling)


def test_max_tokens_stop_and_token_counts(model, tokenizer):
    pixels = [torch.randn(3, 64, 64), torch.randn(3, 64, 64)]
    full = sample(model, tokenizer, pixels, Sampling(24, temperature=1.0))
    assert all(g.text and g.tokens <= 24 for g in full)
    short = sample(model, tokenizer, pixels, Sampling(3, temperature=1.0))
    assert [(g.tokens, g.finish_reason) for g in short] == [(3, "length")] * 2
    assert all(f.text.startswith(s.text) for f, s in zip(full, short))
    text = full[0].text
    # Three characters from the middle (a stop string may also match across the prompt's end, "ASSISTANT:").
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop and not stop.startswith(":")
    stopped = sample(model, tokenizer, pixels, Sampling(24, temperature=1.0, stop=(stop,)))[0]
    assert stopped.finish_reason == "stop" and stopped.text == text[:text.find(stop)].strip()
    assert stopped.tokens < full[0].tokens


def test_a_stop_string_that_begins_in_the_prompt_does_not_end_the_answer(model, tokenizer):
    """The vicuna prompt ends with "ASSISTANT:"; a stop string made of that colon and the answer's
    first token, as generated, spans the two and is not in the answer, which is generated in full."""
    pixels = [torch.randn(3, 64, 64)]
    prompt = encode_prompt(tokenizer, render_prompt("vicuna_v1", HUMAN), num_image_tokens(model))
    torch.manual_seed(3)
    out = model.generate(input_ids=torch.tensor([prompt]), pixel_values=pixels[0][None], max_new_tokens=24,
                         do_sample=True, temperature=1.0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)[0, len(prompt):]
    answer = tokenizer.decode(out, skip_special_tokens=True)
    stop = ":" + tokenizer.decode(out[:1], skip_special_tokens=True)
    assert render_prompt("vicuna_v1", HUMAN).endswith(":") and len(stop) > 1 and stop not in answer
    full = sample(model, tokenizer, pixels, Sampling(24, temperature=1.0))[0]
    assert full.text == answer.strip() and full.tokens == 24  # what generate_batch samples, seed 3
    assert sample(model, tokenizer, pixels, Sampling(24, temperature=1.0, stop=(stop,)))[0] == full


def test_greedy_is_deterministic_and_temperature_samples(model, tokenizer):
    pixels = [torch.randn(3, 64, 64)]
    greedy = {sample(model, tokenizer, pixels, Sampling(12), seed)[0].text for seed in range(2)}
    sampled = {sample(model, tokenizer, pixels, Sampling(12, temperature=1.5), seed)[0].text for seed in range(4)}
    assert len(greedy) == 1 and len(sampled) > 1


@pytest.mark.parametrize("template", ["vicuna_v1", "vicuna_v1_image_last", "plain"])
def test_a_left_padded_batch_generates_what_each_prompt_generates_alone(model, tokenizer, template):
    """Evaluation and serving batch prompts of different lengths (indications differ): the padding
    must change nothing, neither the positions nor what the model attends to. Compared on every
    generated step's logits, and on the texts generate_batch returns."""
    torch.manual_seed(1)
    pixels = [torch.randn(3, 64, 64) for _ in range(3)]
    humans = ["<image>\nProvide a description of the findings in the radiology image.",
              "<image>\nProvide a description of the findings in the radiology image given the following "
              "indication: shortness of breath and cough for three days",
              "<image>\nDescribe."]
    tokens = num_image_tokens(model)

    def scores(indices: list[int]) -> torch.Tensor:
        batch = collate([{"input_ids": encode_prompt(tokenizer, render_prompt(template, humans[i]), tokens),
                          "pixel_values": pixels[i]} for i in indices], tokenizer.pad_token_id, left_pad=True)
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
        return torch.stack(out.scores, dim=1)  # (batch, step, vocab)

    batched = scores([0, 1, 2])
    if template != "plain":  # the prompts differ in length: the batch is padded
        assert len({len(encode_prompt(tokenizer, render_prompt(template, h), tokens)) for h in humans}) == 3
    for i in range(3):
        torch.testing.assert_close(batched[i], scores([i])[0], atol=1e-4, rtol=1e-4)
    texts = generate_batch(model, tokenizer, pixels, humans, template, Sampling(16))
    assert texts == [generate_batch(model, tokenizer, [p], [h], template, Sampling(16))[0]
                     for p, h in zip(pixels, humans)]


def test_the_image_placeholder_is_never_generated(tokenizer):
    """<image>'s output row of a pretrained language model is drawn at random when radlab adds the
    token: even where it would win every step (forced here), generation never writes it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({"preset": "tiny"}), tokenizer).eval()
    image_id = tokenizer.convert_tokens_to_ids("<image>")

    def favour_image(module, inputs, logits):
        logits[..., image_id] += 1e4
        return logits

    model.lm_head.register_forward_hook(favour_image)
    batch = collate([{"input_ids": encode_prompt(tokenizer, render_prompt("vicuna_v1", HUMAN), num_image_tokens(model)),
                      "pixel_values": torch.zeros(3, 64, 64)}], tokenizer.pad_token_id)
    plain = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"], max_new_tokens=3, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    assert plain[0, -3:].tolist() == [image_id] * 3  # what transformers' generate alone writes
    for sampling in (Sampling(8), Sampling(8, temperature=1.0)):
        generated = sample(model, tokenizer, [torch.zeros(3, 64, 64)], sampling)[0]
        assert generated.tokens == 8 and generated.text  # eight tokens, none of them <image>
