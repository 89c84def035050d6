"""The paper's path rehearsed: experiments/llava_rad.yaml itself, end to end, on miniatures of what
it names in their real formats: the released annotations (PhysioNet llava-rad-mimic-cxr-annotation)
over MIMIC-CXR-JPG's folders of non-square JPEGs, BiomedCLIP-CXR in its open_clip release layout
(a DINOv2 trunk with LayerScale, written by timm), and Vicuna-7B v1.5's folder as lmsys releases it
(a SentencePiece tokenizer.model, no pad token, fp16 weights in pytorch_model-*.bin shards). The YAML is run
as shipped but for paths, sizes, and what this machine lacks: GPUs (precision fp32) and GPT-4 (a
fake GPT-4 on loopback that speaks Azure OpenAI's protocol, as the YAML's judge does). Ingest,
import, stage 1, stage 2 (LoRA under DeepSpeed ZeRO-2), CheXprompt, registration, export and
`serve --once`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from mlflow import MlflowClient
from transformers import AutoProcessor, LlavaForConditionalGeneration
from typer.testing import CliRunner

from radlab.cli import app
from radlab.evaluation.chexprompt import LETTERS, Counts, format_answer
from radlab.evaluation.reference_judge import serve_in_thread
from radlab.formats.images import load_image
from radlab.formats.prompts import VICUNA_SYSTEM, encode_prompt, render_prompt
from radlab.model.checkpoint import load_checkpoint
from radlab.model.generation import generate_texts
from radlab.tracking.runs import fetch_checkpoint

from .conftest import free_port
from .data.ingest.layouts import image, llava_rad_record
from .model.test_llava_rad import FINDINGS, TIMM_TOWERS, open_clip_folder, vicuna_release

ROOT = Path(__file__).resolve().parents[1]


def annotation_release(root: Path) -> tuple[Path, Path]:
    """The three JSON arrays and their JPEGs: 8 training studies (rule-based and GPT-4 text each),
    3 dev and 3 test studies (the test split's GPT-4 records are left out, as the release does)."""
    files, annotations = root / "mimic-cxr-jpg" / "files", root / "llava-rad-mimic-cxr-annotation"
    annotations.mkdir(parents=True)
    splits: dict[str, list] = {"train": [], "dev": [], "test": []}
    for n in range(14):
        split = "train" if n < 8 else "dev" if n < 11 else "test"
        subject, study = f"1{n:07d}", f"5{n:07d}"
        findings = FINDINGS[n % len(FINDINGS)]
        reason = None if n % 4 == 3 else f"___ year old with cough {n}// eval"
        splits[split] += [llava_rad_record(subject, study, f"d{n}", "rule-based", findings, reason=reason),
                          llava_rad_record(subject, study, f"d{n}", "gpt4", findings.replace(".", ", stable."),
                                           reason=reason)]
        image(files / f"p{subject[:2]}/p{subject}/s{study}/d{n}.jpg", size=(42, 32))  # not square
    for split, records in splits.items():
        (annotations / f"chat_{split}_MIMIC_CXR_all_gpt4extract_rulebased_v1.json").write_text(json.dumps(records))
    return annotations, files


def fake_gpt4_on_azure(calls: list) -> FastAPI:
    """Stands in for GPT-4 behind Azure OpenAI (it cannot exist here): Azure's deployment route and
    api-version query, and an answer in CheXprompt's format (one omission where the candidate is not
    the reference word for word)."""
    fake = FastAPI(title="fake GPT-4 on Azure OpenAI")

    @fake.post("/openai/deployments/{deployment}/chat/completions")
    async def complete(deployment: str, request: Request) -> dict:
        body = await request.json()
        text = body["messages"][-1]["content"]
        calls.append({"deployment": deployment, "api_version": request.query_params.get("api-version"),
                      "key": request.headers.get("api-key")})
        reference = text.split("<reference>")[1].split("</reference>")[0].strip()
        candidate = text.split("<candidate>")[1].split("</candidate>")[0].strip()
        zero = dict.fromkeys(LETTERS, 0)
        counts = Counts(zero | {"b": int(reference != candidate)}, zero)
        answer = format_answer(counts, "fake GPT-4")
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": deployment,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 20, "total_tokens": 20}}

    return fake


def test_the_llava_rad_recipe_runs_end_to_end_on_real_format_miniatures(ray_session, mlflow_server, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "fake-key")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    runner = CliRunner()
    annotations, files = annotation_release(tmp_path / "physionet")
    made = json.loads((TIMM_TOWERS / "made_with.json").read_text())
    vicuna = vicuna_release(tmp_path / "weights" / "vicuna-7b-v1.5", FINDINGS + [VICUNA_SYSTEM, "USER: ASSISTANT:"])

    ingested = runner.invoke(app, ["data", "ingest", "llava-rad", "--annotations", str(annotations),
                                   "--image-root", str(files), "--out", "llava_rad"])
    assert ingested.exit_code == 0, ingested.output
    converted = runner.invoke(app, ["import", "open-clip-vision", "--vision", str(open_clip_folder(tmp_path, "dinov2")),
                                    "--out", "biomedclipcxr_518-hf"])
    assert converted.exit_code == 0 and "kind: dinov2" in converted.output, converted.output

    calls: list = []
    with serve_in_thread(fake_gpt4_on_azure(calls)) as url:
        overrides = {
            "data.mixture.0.manifest": "llava_rad/train.jsonl", "data.val_manifest": "llava_rad/val.jsonl",
            "data.eval_manifest": "llava_rad/test.jsonl", "data.image_root": str(files),
            "model.vision.path": "biomedclipcxr_518-hf", "model.vision.image_size": made["size"],
            "model.vision.patch_size": made["patch"], "model.vision.hidden_size": made["width"],
            "model.vision.layers": made["depth"], "model.vision.heads": made["heads"],
            "model.vision.intermediate_size": 4 * made["width"],
            "model.language.path": str(vicuna), "model.language.hidden_size": 64, "model.language.layers": 2,
            "model.language.heads": 4, "model.language.intermediate_size": 128, "model.language.vocab_size": 400,
            "stage1.max_steps": 2, "stage1.global_batch": 4, "stage1.micro_batch": 2,
            "stage2.max_steps": 2, "stage2.global_batch": 4, "stage2.micro_batch": 2,
            "eval.limit": 2, "eval.max_new_tokens": 8, "eval.batch_size": 2,
            "eval.judge.base_url": url.removesuffix("/v1"), "eval.judge.requests_per_minute": 600,
            "tracking.uri": mlflow_server, "ray.storage_path": str(tmp_path / "ray"),
            # what this machine lacks: GPUs
            "ray.address": "null", "ray.use_gpu": "false", "ray.accelerator": "null", "ray.gpu_memory_gb": "null",
            "ray.precision": "fp32", "ray.workers": 2, "ray.cpus_per_worker": 1,
        }
        run = runner.invoke(app, ["run", str(ROOT / "experiments" / "llava_rad.yaml"),
                                  *[arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]])
    assert run.exit_code == 0, run.output
    # Said before training, not only in the summary: the scorer files this machine lacks.
    assert "will skip chexbert_f1: eval.chexbert_weights: no file at /data/scorers/chexbert.pth" in run.output
    # The judge was asked as the YAML says: the Azure deployment gpt-4, its api-version, the key.
    assert calls and {(c["deployment"], c["key"]) for c in calls} == {("gpt-4", "fake-key")}
    assert all(c["api_version"] for c in calls)

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("radlab-llava-rad", "candidate")
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["chexprompt/n_reports"] == 2 and "chexprompt/significant_mean" in metrics
    assert metrics["stage1/val_loss"] > 0 and metrics["stage2/val_loss"] > 0
    tags = client.get_run(version.run_id).data.tags
    assert "radlab.skipped.chexbert_f1" in tags  # its weights are not here: skipped with the reason, not dropped
    assert tags["radlab.judge.endpoint"] == "azure"

    # The registered model: the recipe's model, every part as the real path builds it.
    with_model = tmp_path / "registered"
    exported = runner.invoke(app, ["export", "models:/radlab-llava-rad@candidate", "--out", str(with_model)])
    assert exported.exit_code == 0, exported.output
    hf = LlavaForConditionalGeneration.from_pretrained(with_model).eval()
    assert hf.config.vision_config.model_type == "dinov2" and hf.config.text_config.model_type == "llama"
    processor = AutoProcessor.from_pretrained(with_model)
    # A test study's image, 42 x 32: resized to 36 x 28, 8 columns to crop (with an odd number,
    # transformers' PIL processor crops one column off from torchvision's centre: tests/data/test_images.py).
    jpg = next(files.rglob("d11.jpg"))
    human = "Provide a description of the findings in the radiology image."
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                          {"type": "text", "text": human}]}],
                                           add_generation_prompt=True)
    inputs = processor(images=load_image(jpg).convert("RGB"), text=prompt, return_tensors="pt")
    ours = load_checkpoint(fetch_checkpoint("models:/radlab-llava-rad@candidate", mlflow_server, tmp_path / "download"))
    assert inputs["input_ids"][0].tolist() == encode_prompt(ours.tokenizer, render_prompt("vicuna_v1", human),
                                                            ours.model_config.vision.num_image_tokens)
    assert ours.tokenizer.pad_token == "<unk>" and inputs["input_ids"][0][0] == 1  # one BOS, pad = unk
    pixels = ours.transform(load_image(jpg))
    assert torch.allclose(inputs["pixel_values"][0], pixels, atol=1e-5)
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = generate_texts(ours.model.merge_and_unload().eval(), ours.tokenizer, [pixels], [human], "vicuna_v1", 6)
    assert processor.decode(theirs[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == expected[0]

    served = subprocess.run([sys.executable, "-m", "radlab.cli", "serve", "--model", "models:/radlab-llava-rad@candidate",
                             "--port", str(free_port()), "--once", str(jpg)], cwd=tmp_path,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert served.returncode == 0 and f"{jpg} -> " in served.stdout, served.stdout
