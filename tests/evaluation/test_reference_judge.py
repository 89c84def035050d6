import httpx
import openai

from radlab.data.synthetic import Finding, write_findings
from radlab.evaluation.chexprompt import Prompt, parse_answer
from radlab.evaluation.reference_judge import create_app, judge_pair, serve_in_thread

EFFUSION = Finding("effusion", "left", None, "small")
CONSOLIDATION = Finding("consolidation", "right", "lower", "moderate")


def test_exact_counts():
    ref = write_findings([EFFUSION, CONSOLIDATION])
    same = judge_pair(ref, ref)[0]
    assert same.significant == same.insignificant == dict.fromkeys("ABCDEF", 0)
    wrong = write_findings([Finding("effusion", "right", None, "moderate"), Finding("nodule", "left", "upper")])
    counts, explanation = judge_pair(ref, wrong)
    assert counts.significant == {"A": 1, "B": 1, "C": 1, "D": 0, "E": 0, "F": 0}
    assert counts.insignificant == {"A": 0, "B": 0, "C": 0, "D": 1, "E": 0, "F": 0}  # small -> moderate is one step
    assert "false nodule" in explanation and "missed consolidation" in explanation
    counts, _ = judge_pair(ref, ref + " Compared to prior, unchanged. Gibberish here.")
    assert counts.insignificant["E"] == 1 and counts.insignificant["A"] == 1


def test_served_over_http_to_the_openai_client():
    ref = write_findings([EFFUSION])
    with serve_in_thread(create_app()) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="local")
        models = client.models.list()
        reply = client.chat.completions.create(model="x", messages=Prompt.load(None).messages(ref, write_findings([])))
        bad = httpx.post(f"{base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert models.data[0].id == "radlab-synthetic-reference"
    assert parse_answer(reply.choices[0].message.content).significant["B"] == 1
    assert reply.usage.prompt_tokens > 0
    assert bad.status_code == 400 and "<reference>" in bad.json()["error"]["message"]


def test_two_severity_steps_are_significant():
    counts, _ = judge_pair(write_findings([EFFUSION]), write_findings([Finding("effusion", "left", None, "large")]))
    assert counts.significant["D"] == 1 and counts.insignificant["D"] == 0


def test_judges_started_at_once_each_listen_on_a_port_of_their_own():
    """Sweep trials start their loopback judges together: each listens on the port the system gave
    its own socket and answers there."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    together = threading.Barrier(6)
    with ExitStack() as stack:
        def start(_) -> str:
            together.wait()
            return stack.enter_context(serve_in_thread(create_app()))

        with ThreadPoolExecutor(6) as pool:
            urls = list(pool.map(start, range(6)))
        answers = [httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] for url in urls]
    assert len(set(urls)) == 6 and all(not url.endswith(":0/v1") for url in urls)
    assert answers == ["radlab-synthetic-reference"] * 6
