"""The Serve application on a real Serve instance on loopback, with the tiny model."""

import base64
import io
import ipaddress
import re
import struct
import time
import zlib

import httpx
import numpy as np
import openai
import psutil
import pydicom
import pytest
import torch
import yaml
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from ray import serve
from ray.serve.schema import ServeDeploySchema

from radlab.config import ConfigError, ModelConfig
from radlab.model.build import build_model
from radlab.model.checkpoint import save_checkpoint
from radlab.model.generation import pick_device_dtype
from radlab.serve.app import ReportServer, ServeArgs, build_app
from radlab.serve.deploy import HealthWatch, deploy_failure, with_auth_for

from ..conftest import ROOT, free_port

KEY = "s3cret-test-token"


def png(width=64, height=64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def huge_png_header(side=20000) -> bytes:
    """A valid PNG header announcing side x side pixels (the pixel data itself is never read)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def dicom_bytes(pixels: np.ndarray | None = None) -> bytes:
    """A small CR DICOM, with MONOCHROME1 pixel data or without any."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientName = "Test^Anon"
    ds.Modality = "CR"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(ray_session, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "ckpt"
    config = ModelConfig.model_validate({"preset": "tiny"})
    save_checkpoint(folder, build_model(config, tokenizer), tokenizer, config, None,
                    {"stage": "stage2", "step": 7, "template": "vicuna_v1"})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": str(folder), "max_new_tokens": 48, "max_batch_size": 4, "max_body_bytes": 300_000}
    serve.run(build_app(args), name="open", route_prefix="/", blocking=False)
    secure = ReportServer.options(ray_actor_options={"runtime_env": {"env_vars": {"RADLAB_TEST_KEY": KEY}}})
    serve.run(secure.bind({**args, "api_key_env": "RADLAB_TEST_KEY"}), name="secure", route_prefix="/secure",
              blocking=False)
    yield f"http://127.0.0.1:{port}", folder
    serve.shutdown()


def chat(url, content):
    return httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]},
                      timeout=60)


def report(url, image=None, **kwargs):
    files = {"image": ("x.png", image)} if image is not None else None
    return httpx.post(f"{url}/v1/reports", files=files, timeout=60, **kwargs)


def test_report_endpoint_multipart_json_and_dicom(served):
    url, _ = served
    reply = report(url, png(), data={"indication": "dyspnea"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert isinstance(body["findings"], str) and body["model"] == "radlab" and body["version"] == "stage2@7"
    assert body["timings_ms"]["generate"] > 0
    as_json = httpx.post(f"{url}/v1/reports", json={"image_base64": base64.b64encode(png()).decode()}, timeout=60)
    assert as_json.status_code == 200
    dicom = report(url, dicom_bytes(np.arange(96 * 80).reshape(96, 80) % 4096))
    assert dicom.status_code == 200, dicom.text
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def image_message(text="Describe the findings.") -> list[dict]:
    image = f"data:image/png;base64,{base64.b64encode(png()).decode()}"
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image}}]}]


def streamed(client, messages, **options) -> tuple[list[str], str, object, list[float]]:
    """(content pieces, finish reason, usage, arrival time of each piece) of a streamed completion."""
    started, arrivals, pieces, finish, usage = time.perf_counter(), [], [], None, None
    for chunk in client.chat.completions.create(model="radlab", messages=messages, stream=True,
                                                stream_options={"include_usage": True}, **options):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            if choice.delta.content:
                pieces.append(choice.delta.content)
                arrivals.append(time.perf_counter() - started)
    return pieces, finish, usage, arrivals


def test_openai_client_chat_plain_and_streaming(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["radlab"]
    messages = image_message()
    reply = client.chat.completions.create(model="radlab", messages=messages)
    text = reply.choices[0].message.content
    # The prompt as the model saw it: BOS, the chat template and the tiny tower's 16 image tokens;
    # the untrained model writes until the server's max_new_tokens.
    assert reply.usage.prompt_tokens > 16 and reply.usage.total_tokens == reply.usage.prompt_tokens + \
        reply.usage.completion_tokens
    assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (48, "length")
    pieces, finish, usage, _ = streamed(client, messages)
    assert "".join(pieces) == text and finish == "length" and usage.completion_tokens == 48
    # Sampled text has spaces, at which the streamer lets words go as soon as they are generated:
    # the first arrives well before the last, not all at the end.
    for _ in range(3):  # a sample that ends early (EOS) has too few words to tell; draw again
        pieces, _, _, arrivals = streamed(client, messages, temperature=1.0)
        if len(pieces) > 5:
            break
    assert len(pieces) > 5 and arrivals[0] < 0.5 * arrivals[-1], arrivals
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4", messages=messages)


def test_max_tokens_stop_and_temperature_are_honoured(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    messages = image_message()
    short = client.chat.completions.create(model="radlab", messages=messages, max_tokens=5)
    assert (short.usage.completion_tokens, short.choices[0].finish_reason) == (5, "length")
    newer_name = client.chat.completions.create(model="radlab", messages=messages, max_completion_tokens=4)
    assert newer_name.usage.completion_tokens == 4
    sampled = client.chat.completions.create(model="radlab", messages=messages, temperature=1.2, top_p=0.9, stop=["zz"])
    text = sampled.choices[0].message.content
    assert "zz" not in text and sampled.usage.completion_tokens <= 48
    for stream in (False, True):
        # A letter sampled text is full of; the prompt ends "ASSISTANT:", so it cannot match there.
        options = {"stop": ["e", "zz"], "temperature": 1.2, "top_p": 0.9}
        cut = streamed(client, messages, **options) if stream else \
            client.chat.completions.create(model="radlab", messages=messages, **options)
        assert "e" not in (cut.choices[0].message.content if not stream else "".join(cut[0]))
    for wrong, field in [({"max_tokens": 49}, "max_tokens must be a whole number from 1 to 48"),
                         ({"max_tokens": 0}, "max_tokens"), ({"temperature": 3}, "temperature must be a number"),
                         ({"top_p": 0}, "top_p"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be"),
                         ({"n": 2}, "n must be 1")]:
        with pytest.raises(openai.BadRequestError, match=field):
            client.chat.completions.create(model="radlab", messages=messages, **wrong)


@pytest.mark.parametrize("name, send, status, message", [
    ("not an image", lambda url: report(url, b"hello, not an image"), 422, "not a readable PNG"),
    ("truncated png", lambda url: report(url, png()[:100]), 422, "not a readable"),
    ("20,000 x 20,000", lambda url: report(url, huge_png_header()), 422, "too many pixels"),
    ("dicom without pixels", lambda url: report(url, dicom_bytes()), 422, "DICOM without readable pixel data"),
    ("wrong json", lambda url: httpx.post(f"{url}/v1/reports", content=b"{oops", headers={"content-type": "application/json"}), 400, "not valid JSON"),
    ("missing field", lambda url: httpx.post(f"{url}/v1/reports", json={"indication": "x"}), 400, "image_base64"),
    ("no image part", lambda url: httpx.post(f"{url}/v1/reports", files={"other": ("x", b"1")}), 400, "'image'"),
    ("chat without image", lambda url: httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}), 400, "exactly one image_url"),
    ("oversized body", lambda url: report(url, b"\0" * 400_000), 413, "exceeds"),
    ("oversized chunked body", lambda url: httpx.post(f"{url}/v1/reports", content=iter([b"{" + b" " * 100_000] * 4),
                                                      headers={"content-type": "application/json"}), 413, "exceeds"),
    ("image_url as a string", lambda url: chat(url, [{"type": "image_url", "image_url": "data:image/png;base64,AA"}]),
     400, "content[0].image_url must be"),
    ("image_url url as a number", lambda url: chat(url, [{"type": "image_url", "image_url": {"url": 7}}]), 400,
     "content[0].image_url must be"),
    ("text part not text", lambda url: chat(url, [{"type": "text", "text": 5}]), 400, "content[0].text must be text"),
])
def test_bad_input_gets_a_4xx_and_the_replica_stays_up(served, name, send, status, message):
    url, _ = served
    reply = send(url)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]["message"]
    assert report(url, png()).status_code == 200


def test_bearer_token_on_every_route_but_health(served):
    url, _ = served
    secure = f"{url}/secure"
    assert report(secure, png()).status_code == 401
    assert report(secure, png(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert report(secure, png(), headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{secure}/v1/models").status_code == 401
    assert httpx.get(f"{secure}/healthz").status_code == 200
    for page in ("docs", "openapi.json"):
        assert httpx.get(f"{secure}/{page}").status_code == 401
        assert httpx.get(f"{secure}/{page}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert "/v1/chat/completions" in httpx.get(f"{url}/openapi.json").json()["paths"]
    client = openai.OpenAI(base_url=f"{secure}/v1", api_key=KEY)
    assert client.models.list().data[0].id == "radlab"


def test_a_checkpoint_that_fails_to_load_fails_the_deploy(served, tmp_path):
    with pytest.raises(RuntimeError, match="Deploying application broken failed"):
        serve.run(build_app({"model": str(tmp_path)}), name="broken", route_prefix="/broken", blocking=True)
    assert "not a radlab checkpoint" in deploy_failure("broken")
    serve.delete("broken")
    assert report(served[0], png()).status_code == 200


def test_a_replica_serve_restarts_is_said_with_serves_reason(served):
    """A replica that dies while serving (here killed; a crash or the OOM killer alike) is restarted
    by Serve; `radlab serve`'s watch says it went UNHEALTHY, why, and that it is HEALTHY again."""
    import ray
    from ray.util import list_named_actors

    serve.run(build_app({"model": str(served[1]), "max_new_tokens": 8}), name="watched", route_prefix="/watched",
              blocking=False)
    watch = HealthWatch("watched")
    [replica] = [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::watched#")]
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    said = []
    deadline = time.time() + 90
    while not any("-> HEALTHY" in line for line in said) and time.time() < deadline:
        time.sleep(0.5)
        said += watch.changes()
    serve.delete("watched")
    assert said[0].startswith("watched/ReportServer: HEALTHY -> UNHEALTHY: A replica's health check failed"), said
    assert said[-1] == "watched/ReportServer: UNHEALTHY -> HEALTHY (replicas: 1 RUNNING)", said
    assert report(served[0], png()).status_code == 200  # the other applications served on


CONTROLLER_LOST = """
import json, sys, time, httpx, ray
from ray import serve
from radlab.runtime import start_embedded_ray
from radlab.serve.deploy import HealthWatch
start_embedded_ray(2, logging_level="ERROR", log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
@serve.deployment
class Echo:
    def __call__(self, request):
        return "served"
serve.run(Echo.bind(), name="lost", route_prefix="/lost")
watch = HealthWatch("lost")
ray.kill(ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve"), no_restart=True)
time.sleep(1)
said = watch.changes() + watch.changes()
print(json.dumps({"said": said, "answer": httpx.get(f"http://127.0.0.1:{sys.argv[1]}/lost").text}))
"""


def test_a_controller_that_stops_answering_is_said_and_serving_goes_on():
    """Serve's controller gone for good (killed without a restart): `radlab serve`'s watch says so
    once instead of raising, which would end the command and the embedded Ray that serves; the
    replica and the HTTP proxy answer on without the controller. Its own Ray, in a process of its own
    (the session's Serve keeps its controller)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CONTROLLER_LOST, str(free_port())], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"said"')))
    assert result["answer"] == "served"
    [line] = result["said"]
    assert line.startswith("Serve's controller did not answer (ActorDiedError: The actor died") and \
        "the replicas serve on" in line, line


RADLAB_SERVE_OWN_RAY = """
import ipaddress, json, os, re, signal, sys, time, httpx, psutil
from radlab.serve.deploy import deploy, undeploy
folder, port = sys.argv[1], int(sys.argv[2])
url, _ = deploy({"model": folder, "max_new_tokens": 8}, {"num_cpus": 1}, "127.0.0.1", port, verbose=True)

def listeners():
    titles = {p.pid: " ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)}
    return [(c.laddr.ip, c.laddr.port, c.pid, titles[c.pid]) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in titles]

def actor(title):  # the title less the ".<method>" Ray adds to an actor's title while it runs that method
    return re.sub(r"^(ray::[^ .]+)\\.\\S+", r"\\1", title.split()[0])

def answered():
    return httpx.post(f"{url}/v1/reports", files={"image": ("x.png", open(sys.argv[3], "rb"))}, timeout=60).status_code

first = [(pid, title) for _, p, pid, title in listeners() if p == port]
result = {"url": url, "answered": answered(), "on_port": [actor(title) for _, title in first],
          "wildcard": sorted(actor(t) for ip, _, _, t in listeners() if not ipaddress.ip_address(ip).is_loopback
                             and not ip.endswith("127.0.0.1"))}
os.kill(first[0][0], signal.SIGKILL)  # a replica that dies: Serve starts another on the same port
deadline = time.time() + 90
while time.time() < deadline:
    time.sleep(0.5)
    try:
        result["answered_again"] = answered()
        break
    except httpx.TransportError:
        pass
result["on_port_again"] = [actor(t) for _, p, pid, t in listeners() if p == port and pid != first[0][0]]
undeploy()
print(json.dumps(result))
"""


def test_radlab_serve_on_its_own_ray_answers_from_the_replica_on_the_port_asked(served, synthetic_root):
    """`radlab serve` on a Ray of its own: the replica itself listens on the port asked for (Ray
    Serve's direct ingress, no proxy hop), on loopback; a replica Serve restarts takes the port again
    and answers; with --verbose the replica's access log reaches the console. Its own Ray, in a
    process of its own."""
    import json
    import os
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", RADLAB_SERVE_OWN_RAY, str(served[1]), str(port),
                           str(synthetic_root / "images" / "test" / "000000.png")], capture_output=True, text=True,
                          env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["url"] == f"http://127.0.0.1:{port}" and result["answered"] == 200
    assert result["on_port"] == ["ray::ServeReplica:radlab:ReportServer"]
    assert result["wildcard"] == ["ray::ServeReplica:radlab:ReportServer"]  # its gRPC server, as with the proxy
    assert result["answered_again"] == 200 and result["on_port_again"] == ["ray::ServeReplica:radlab:ReportServer"]
    assert re.search(r"\(ServeReplica:radlab:ReportServer pid=\d+\).* POST /v1/reports 200", done.stderr + done.stdout)


def test_shipped_serve_configs():
    for name in ("local.yaml", "v100.yaml"):
        raw = yaml.safe_load((ROOT / "serving" / name).read_text())
        schema = ServeDeploySchema.model_validate(raw)
        assert schema.http_options.host == "127.0.0.1"
        app = raw["applications"][0]
        assert app["import_path"] == "radlab.serve.app:build_app"
        ServeArgs.model_validate(with_auth_for(schema.http_options.host, app["args"]))
    v100 = yaml.safe_load((ROOT / "serving/v100.yaml").read_text())["applications"][0]
    options = v100["deployments"][0]["ray_actor_options"]
    # The batch it is sized for needs the 32 GB V100s (tests/model/test_memory.py), which the
    # cluster files label V100-32G.
    assert options["accelerator_type"] == "V100-32G" and options["num_gpus"] == 1
    assert v100["args"]["dtype"] == "fp16" and v100["args"]["api_key_env"]
    assert v100["deployments"][0]["autoscaling_config"]["max_replicas"] >= 1


def test_auth_is_on_whenever_the_host_is_not_loopback(monkeypatch):
    monkeypatch.delenv("RADLAB_SERVE_TOKEN", raising=False)
    open_args = {"model": "ckpt"}
    for host in ("127.0.0.1", "localhost", "::1"):
        assert with_auth_for(host, open_args) == open_args
    for host in ("0.0.0.0", "::", "10.1.2.3", "127.attacker.example"):
        with pytest.raises(ConfigError, match=f"host {re.escape(host)} is not loopback.*export RADLAB_SERVE_TOKEN="):
            with_auth_for(host, open_args)
    monkeypatch.setenv("RADLAB_SERVE_TOKEN", "t0ken")
    assert with_auth_for("0.0.0.0", open_args) == {"model": "ckpt", "api_key_env": "RADLAB_SERVE_TOKEN"}
    with pytest.raises(ConfigError, match="export SITE_TOKEN="):
        with_auth_for("0.0.0.0", {"model": "ckpt", "api_key_env": "SITE_TOKEN"})


def test_dtype_choice_per_device():
    assert pick_device_dtype("cpu", "auto")[1] == torch.float32
    assert pick_device_dtype("cpu", "bf16")[1] == torch.bfloat16
    # GPUs simulated by their compute capability: V100 7.0 and T4 7.5 take fp16, A100 8.0 bf16.
    assert pick_device_dtype("cuda", "auto", capability=(7, 0)) == (torch.device("cuda"), torch.float16)
    assert pick_device_dtype("cuda", "auto", capability=(7, 5))[1] == torch.float16
    assert pick_device_dtype("cuda", "auto", capability=(8, 0))[1] == torch.bfloat16
    assert pick_device_dtype("cuda", "fp16", capability=(9, 0))[1] == torch.float16
    with pytest.raises(ValueError, match=r"dtype bf16: this GPU \(compute capability 7.0"):
        pick_device_dtype("cuda", "bf16", capability=(7, 0))


def listening_sockets() -> list[tuple[str, str]]:
    """(bound address, process) of every listening socket of this test and the Ray it started: the
    process's title, less the ".<method>" Ray adds to an actor's title while it runs that method."""
    me = psutil.Process()
    titles = {p.pid: re.sub(r"^(ray::[^ .]+)\.\S+", r"\1", " ".join(p.cmdline()))
              for p in [me, *me.children(recursive=True)]}
    return [(c.laddr.ip, titles[c.pid]) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in titles]


def test_every_listener_binds_loopback_but_serves_replica_grpc(served):
    """The HTTP proxy, Serve's controller and Ray's own servers bind loopback. Ray Serve 2.60 starts
    a gRPC server in every replica on [::]:<random port> with no setting for its host: that one
    exception, one per replica, is what serving/*.yaml and the README name."""
    sockets = listening_sockets()
    assert any(title.startswith("ray::ProxyActor") for _, title in sockets)
    wildcard = [title.split()[0] for ip, title in sockets if not ipaddress.ip_address(ip).is_loopback
                and not ip.endswith("127.0.0.1")]
    assert sorted(wildcard) == ["ray::ServeReplica:open:ReportServer", "ray::ServeReplica:secure:ReportServer"]
