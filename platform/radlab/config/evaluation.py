"""The `eval` section with its CheXprompt judge (and the off-site rule that guards reports), and
the `tracking` section."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationInfo, model_validator

from radlab.config.base import Section
from radlab.metric_specs import METRICS

OFFSITE_RPM = 30.0


def is_on_site(url: str | None, site_hosts: Iterable[str] = ()) -> bool:
    """The off-site rule, in one place: a URL whose host is a loopback IP literal, `localhost` (or a
    name under `.localhost`) or one of `site_hosts` stays on site; every other host is off site,
    including names that merely start with "127." or "localhost"."""
    host = (urlparse(url or "").hostname or "").lower()
    return bool(host) and (host in {h.lower() for h in site_hosts} or is_loopback_host(host))


def is_loopback_host(host: str) -> bool:
    """`localhost`, a name under `.localhost`, or a loopback IP literal (IPv4-mapped IPv6 included)."""
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class JudgeConfig(Section):
    """The CheXprompt judge: any OpenAI-compatible endpoint."""
    endpoint: Literal["synthetic-reference", "openai", "azure", "compatible"] = Field(
        "synthetic-reference", description="synthetic-reference: radlab's exact judge for the synthetic set, "
        "served on loopback; compatible: any OpenAI-compatible base_url")
    base_url: str | None = Field(None, description="the server for compatible; the resource URL for azure")
    model: str = Field("gpt-4", description="model name, or the deployment name on Azure")
    api_version: str = "2024-06-01"
    api_key_env: str = "OPENAI_API_KEY"
    allow_offsite: bool = Field(False, description="consent to send reports to an endpoint off this machine")
    site_hosts: list[str] = Field([], description="host names on this site's own network, treated like this "
                                  "machine (reports may go there without allow_offsite)")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    requests_per_minute: float | None = Field(None, gt=0, description="None: no limit for a judge on this site, "
                                              f"{OFFSITE_RPM:g} (the published CheXprompt rate) for one off it")
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    retry_base_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(60, gt=0)
    prompt_file: Path | None = Field(None, description="a user prompt with {reference} and {candidate}")
    cache: Path = Path("radlab_runs/judge_cache.sqlite")
    cost_per_1k_input: float = Field(0.0, ge=0)
    cost_per_1k_output: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _endpoint(self, info: ValidationInfo) -> JudgeConfig:
        if self.endpoint in ("compatible", "azure") and not self.base_url:
            raise ValueError(f"endpoint {self.endpoint} needs base_url")
        if self.offsite() and not self.allow_offsite:
            raise ValueError(self.offsite_refusal((info.context or {}).get("consent", "allow_offsite: true")))
        return self

    def offsite(self, base_url: str | None = None) -> bool:
        """Whether requests to this endpoint (at `base_url`, default the configured one) leave the site."""
        if self.endpoint == "synthetic-reference":
            return False
        if self.endpoint in ("openai", "azure"):
            return True
        return not is_on_site(base_url or self.base_url, self.site_hosts)

    @property
    def rate_limit(self) -> float | None:
        """Requests per minute: the configured limit, else none on site and OFFSITE_RPM off it."""
        if self.requests_per_minute is not None:
            return self.requests_per_minute
        return OFFSITE_RPM if self.offsite() else None

    def offsite_refusal(self, consent: str, base_url: str | None = None) -> str:
        where = base_url or self.base_url or "api.openai.com"
        return (f"endpoint {self.endpoint} at {where} is off this machine, so reports (protected health "
                f"information) would leave the site: set {consent} to consent, or list the host in site_hosts "
                f"if it is on your site's network")


Metric = Literal[tuple(METRICS)]  # the metric registry's names


class EvalConfig(Section):
    enabled: bool = True
    split: Literal["val", "test"] = "test"
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="judge only the first N reports")
    show: int = Field(4, ge=0, description="generations printed and logged as examples")
    metrics: list[Metric] = ["chexprompt", "rouge_l", "bleu", "label_f1"]
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    compare_untrained: bool | None = Field(None, description="also score the untrained model side by side, with "
                                           "a paired test; None: on for a judge on this site, off for an off-site "
                                           "judge (it doubles the paid calls)")
    max_failed_share: float = Field(0.05, ge=0, le=1, description="the evaluation fails (exit status 2, no model "
                                    "registered) when more than this share of judgments failed")
    bootstrap: int = Field(1000, ge=10, description="resamples for the 95% intervals")
    grounding: bool | None = Field(None, description="generate again on mirrored and on blank images: flip "
                                   "consistency and image reliance (and, on the synthetic set, errors per "
                                   "attribute); None: on for the synthetic set, off elsewhere (it triples "
                                   "generation)")
    chexbert_weights: Path | None = Field(None, description="the CheXbert labeler's chexbert.pth (StanfordAIMI "
                                          "RRG_scorers) for F1-CheXbert")
    chexbert_bert: Path | None = Field(None, description="a local bert-base-uncased folder: the labeler's "
                                       "tokenizer and BERT config")
    radgraph_python: Path | None = Field(None, description="an interpreter with the radgraph package (pip install "
                                         "radgraph==0.1.18 transformers==4.57.6), which cannot run beside "
                                         "radlab's transformers; F1-RadGraph runs there")
    radgraph_weights: Path | None = Field(None, description="an extracted RRG_scorers RadGraph archive: config.json, "
                                          "vocabulary/, weights.th")
    radgraph_model: Literal["radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph"] = Field(
        "radgraph", description="the RadGraph release in radgraph_weights (each tokenizes reports its own way)")
    radgraph_bert: Path | None = Field(None, description="a local folder of the BERT the RadGraph config names "
                                       "(nothing is downloaded); None keeps the config's own model_name")
    bertscore_model: Path | None = Field(None, description="a local transformers encoder folder for BERTScore "
                                         "(e.g. a downloaded distilroberta-base); BERTScore is skipped without it")
    bertscore_layers: int | None = Field(None, ge=1, description="the layer BERTScore reads (default: the last)")

    @property
    def compares_untrained(self) -> bool:
        return self.compare_untrained if self.compare_untrained is not None else not self.judge.offsite()


class TrackingConfig(Section):
    uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI, else a local sqlite store")
    artifact_root: str = "radlab_runs/mlartifacts"
    register_as: str | None = "radlab"
