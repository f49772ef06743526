"""Automated interpretability with an LLM judge (Fig 9), detection-style as SAEBench's
autointerp eval, through any OpenAI-compatible chat-completions API (standard library only).

For each latent:

1. Examples are windows of ``2 * window_buffer + 1`` tokens centred on one token. The judge
   sees the top-activating windows (no two overlapping) and windows drawn with probability
   proportional to their centre activation among the weaker ones (SAEBench's importance-
   weighted stand-in for activation quantiles). Tokens whose activation is above
   ``act_threshold_fraction`` of the latent's largest activation are marked ``<<like this>>``.
2. The judge writes a one-sentence explanation from those examples.
3. The judge gets the explanation and a shuffled mix of unmarked windows: held-out top and
   importance-weighted ones plus uniformly random ones, and lists the windows on which it
   thinks the latent fires. The latent's score is the fraction of windows classified right;
   a window is "active" if any of its tokens is above the marking threshold.

One difference from SAEBench: random windows are labelled by the latent's real activations
(SAEBench counts them all as inactive), so a random window that happens to contain the
latent's concept is not scored against a judge that recognises it.

The judge is configured by :class:`JudgeConfig` (base URL and model are parameters, e.g. a
local vLLM/llama.cpp/Ollama server or api.openai.com). Without them :func:`autointerp_scores`
returns a result marked ``skipped`` instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

Messages = list[dict[str, str]]


@dataclass
class JudgeConfig:
    """Where the judge is and how examples are drawn (defaults: SAEBench's autointerp).

    Attributes:
        base_url: the chat-completions API's base URL, e.g. "https://api.openai.com/v1" or
            "http://localhost:8000/v1"; empty: no judge configured.
        model: the judge model, e.g. "gpt-4o-mini" (SAEBench's judge); empty: no judge configured.
        api_key: the API key (not shown in the repr); empty: read from ``api_key_env``.
        api_key_env: the environment variable holding the key when ``api_key`` is empty.
        max_latents: latents scored (a seeded sample of the alive ones); >= 1.
        window_buffer: tokens on each side of a window's centre; >= 0.
        act_threshold_fraction: a token is marked (and its window active) above this fraction
            of the latent's largest activation, in [0, 1).
        n_top_for_explanation: top-activating windows shown to write the explanation; >= 1.
        n_weighted_for_explanation: importance-weighted windows shown to write it.
        n_top_for_scoring: held-out top windows in the scoring set.
        n_weighted_for_scoring: held-out importance-weighted windows in the scoring set.
        n_random_for_scoring: uniformly random windows in the scoring set; >= 1.
        use_demos: show example explanations in the explanation prompt.
        max_tokens_explanation: the most tokens the judge may write for an explanation.
        temperature: the judge's sampling temperature.
        timeout_s: seconds to wait for one API answer.
        max_retries: retries of a call on HTTP 429/5xx and connection errors.
        retry_backoff_s: seconds before the first retry, doubled after each one.
        workers: latents judged in parallel; >= 1.
    """

    base_url: str = ""
    model: str = ""
    api_key: str = field(default="", repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    max_latents: int = 100
    window_buffer: int = 10
    act_threshold_fraction: float = 0.01
    n_top_for_explanation: int = 10
    n_weighted_for_explanation: int = 5
    n_top_for_scoring: int = 2
    n_weighted_for_scoring: int = 2
    n_random_for_scoring: int = 10
    use_demos: bool = True
    max_tokens_explanation: int = 30
    temperature: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    workers: int = 4

    def __post_init__(self):
        for name in ("max_latents", "window_buffer", "n_top_for_explanation", "n_random_for_scoring", "workers"):
            if getattr(self, name) < (0 if name == "window_buffer" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.act_threshold_fraction < 1:
            raise ValueError(f"act_threshold_fraction must be in [0, 1), got {self.act_threshold_fraction}")

    @classmethod
    def from_env(cls, **overrides: Any) -> JudgeConfig:
        """Base URL, model and key from ``MSAE_JUDGE_BASE_URL``, ``MSAE_JUDGE_MODEL`` and
        ``MSAE_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``); unset means not configured."""
        values = {
            "base_url": os.environ.get("MSAE_JUDGE_BASE_URL", ""),
            "model": os.environ.get("MSAE_JUDGE_MODEL", ""),
            "api_key": os.environ.get("MSAE_JUDGE_API_KEY", ""),
        }
        return cls(**{**values, **overrides})

    @property
    def n_scoring_examples(self) -> int:
        return self.n_top_for_scoring + self.n_weighted_for_scoring + self.n_random_for_scoring


def judge_configured(config: JudgeConfig | None) -> bool:
    """Whether a judge can be called: both a base URL and a model name are set."""
    return config is not None and bool(config.base_url.strip()) and bool(config.model.strip())


class JudgeError(RuntimeError):
    """The judge's API could not be reached or answered with something unusable."""


# --- examples and prompts ------------------------------------------------------------------


@dataclass
class Example:
    """One window of text with a latent's activation on each token.

    Attributes:
        tokens: the window's tokens, as text.
        acts: the latent's activation on each token.
        threshold: tokens whose activation is above this are marked and make the window active.
    """

    tokens: list[str]
    acts: list[float]
    threshold: float

    @property
    def active_tokens(self) -> list[bool]:
        return [a > self.threshold for a in self.acts]

    @property
    def is_active(self) -> bool:
        return any(self.active_tokens)

    def text(self, mark: bool = False) -> str:
        """The window as one line; with ``mark``, active tokens as ``<<token>>``."""
        pieces = (f"<<{t}>>" if mark and on else t for t, on in zip(self.tokens, self.active_tokens))
        return "".join(pieces).replace("\ufffd", "").replace("\n", "\u21b5")


EXPLANATION_DEMOS = (
    ' Some examples: "This neuron activates on the word \'knows\' in rhetorical questions", and "This '
    'neuron activates on verbs related to decision-making and preferences", and "This neuron activates '
    "on the substring 'Ent' at the start of words\", and \"This neuron activates on text about "
    'government economic policy".'
)


def explanation_messages(examples: Sequence[Example], use_demos: bool = True) -> Messages:
    """The prompt asking for a one-sentence explanation of marked, activating examples
    (given strongest first)."""
    if not examples:
        raise ValueError("no examples to explain")
    listed = "\n".join(f"{i}. {example.text(mark=True)}" for i, example in enumerate(examples, start=1))
    system = (
        "We're studying neurons in a neural network. Each neuron activates on some particular "
        "word/words/substring/concept in a short document. The activating words in each document are "
        "indicated with << ... >>. We will give you a list of documents on which the neuron activates, in "
        "order from most strongly activating to least strongly activating. Look at the parts of the "
        "document the neuron activates for and summarize in a single sentence what the neuron is "
        "activating on. Try not to be overly specific in your explanation. Note that some neurons will "
        "activate only on specific words or substrings, but others will activate on most/all words in a "
        "sentence provided that sentence contains some particular concept. Your explanation should cover "
        "most or all activating words. Pay attention to things like the capitalization and punctuation of "
        "the activating words or concepts, if that seems relevant. Keep the explanation as short and "
        "simple as possible, limited to 20 words or less. Omit punctuation and formatting. You should "
        "avoid giving long lists of words."
    )
    system += EXPLANATION_DEMOS if use_demos else ' Your response should be in the form "This neuron activates on...".'
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"The activating documents are given below:\n\n{listed}"}]


def detection_messages(explanation: str, examples: Sequence[Example], example_answer: Sequence[int]) -> Messages:
    """The prompt asking which of the (unmarked, shuffled) examples the latent fires on.
    ``example_answer`` is the sample reply shown in the instructions (1-based indices)."""
    if not examples:
        raise ValueError("no examples to score")
    listed = "\n".join(f"{i}. {example.text(mark=False)}" for i, example in enumerate(examples, start=1))
    sample = ", ".join(str(i) for i in example_answer)
    system = (
        "We're studying neurons in a neural network. Each neuron activates on some particular "
        "word/words/substring/concept in a short document. You will be given a short explanation of what "
        f"this neuron activates for, and then be shown {len(examples)} example sequences in random order. "
        "You will have to return a comma-separated list of the examples where you think the neuron should "
        "activate at least once, on ANY of the words or substrings in the document. For example, your "
        f'response might look like "{sample}". Try not to be overly specific in your interpretation of the '
        "explanation. If you think there are no examples where the neuron will activate, you should just "
        'respond with "None". You should include nothing else in your response other than comma-separated '
        'numbers or the word "None" - this is important.'
    )
    user = f"Here is the explanation: this neuron fires on {explanation}.\n\nHere are the examples:\n\n{listed}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_explanation(answer: str) -> str:
    """The explanation without its "This neuron activates on" preamble or final period."""
    return answer.split("activates on")[-1].strip().rstrip(".").strip()


def parse_detection_answer(answer: str, n_examples: int) -> list[int] | None:
    """The 1-based example indices in a reply like "2, 5 and 9" or "None"; ``None`` when the
    reply is not such a list or names an example that does not exist."""
    text = answer.strip().strip("\"'`").strip().rstrip(".").strip().strip("[]()")
    if text.lower() in ("", "none"):
        return []
    parts = [p.strip() for p in re.split(r",|\band\b|\s+", text) if p.strip()]
    if not all(p.isdigit() for p in parts):
        return None
    indices = sorted({int(p) for p in parts})
    if indices[0] < 1 or indices[-1] > n_examples:
        return None
    return indices


def detection_score(predicted: Sequence[int] | None, examples: Sequence[Example]) -> float:
    """Fraction of examples classified right; a malformed answer (``None``) gets 0."""
    if predicted is None:
        return 0.0
    chosen = set(predicted)
    return sum((i in chosen) == ex.is_active for i, ex in enumerate(examples, start=1)) / len(examples)


# --- drawing examples ----------------------------------------------------------------------


def top_windows(acts: torch.Tensor, n: int, buffer: int) -> list[tuple[int, int]]:
    """Up to ``n`` (sequence, centre) pairs of the largest positive activations in
    ``acts`` (n_seq, seq_len), no two centres within ``buffer`` tokens of each other in the
    same sequence; centres stay ``buffer`` tokens away from the sequence ends."""
    inner = acts[:, buffer : acts.shape[1] - buffer]  # (n_seq, n_centres)
    flat = inner.flatten()
    candidates = (flat > 0).nonzero().squeeze(1)
    candidates = candidates[flat[candidates].argsort(descending=True, stable=True)]
    seqs, cols = candidates // inner.shape[1], candidates % inner.shape[1]
    chosen = []
    while len(chosen) < n and seqs.numel():
        seq, col = int(seqs[0]), int(cols[0])
        chosen.append((seq, col + buffer))
        keep = (seqs != seq) | ((cols - col).abs() > buffer)
        seqs, cols = seqs[keep], cols[keep]
    return chosen


def weighted_windows(acts: torch.Tensor, n: int, buffer: int, below: float,
                     generator: torch.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` distinct centres with 0 < activation < ``below``, drawn with probability
    proportional to the activation."""
    inner = acts[:, buffer : acts.shape[1] - buffer]
    weights = torch.where((inner > 0) & (inner < below), inner, 0.0).flatten().double()
    n = min(n, int((weights > 0).sum()))
    if n == 0:
        return []
    picks = torch.multinomial(weights, n, replacement=False, generator=generator)
    return [(int(p) // inner.shape[1], int(p) % inner.shape[1] + buffer) for p in picks]


def random_windows(n_seq: int, seq_len: int, n: int, buffer: int, generator: torch.Generator) -> list[tuple[int, int]]:
    seqs = torch.randint(n_seq, (n,), generator=generator)
    centres = torch.randint(buffer, seq_len - buffer, (n,), generator=generator)
    return list(zip(seqs.tolist(), centres.tolist()))


def latent_examples(token_strings: Sequence[Sequence[str]], acts: torch.Tensor, config: JudgeConfig,
                    generator: torch.Generator) -> tuple[list[Example], list[Example]] | None:
    """(explanation examples, strongest first; scoring examples, shuffled) for one latent's
    ``acts`` (n_seq, seq_len), or ``None`` if it never fires away from the sequence ends."""
    b = config.window_buffer
    n_top = config.n_top_for_explanation + config.n_top_for_scoring
    top = top_windows(acts, n_top, b)
    if not top:
        return None
    threshold = config.act_threshold_fraction * float(acts.max())
    weaker_than = min(float(acts[s, c]) for s, c in top)
    weighted = weighted_windows(acts, config.n_weighted_for_explanation + config.n_weighted_for_scoring, b,
                                weaker_than, generator)
    rand = random_windows(acts.shape[0], acts.shape[1], config.n_random_for_scoring, b, generator)

    def window(seq: int, centre: int) -> Example:
        span = slice(centre - b, centre + b + 1)
        return Example(list(token_strings[seq][span]), acts[seq, span].tolist(), threshold)

    top = [top[i] for i in torch.randperm(len(top), generator=generator).tolist()]
    weighted = [weighted[i] for i in torch.randperm(len(weighted), generator=generator).tolist()]
    explain = top[: config.n_top_for_explanation] + weighted[: config.n_weighted_for_explanation]
    score = top[config.n_top_for_explanation :] + weighted[config.n_weighted_for_explanation :] + rand
    explain_examples = sorted((window(*w) for w in explain), key=lambda e: -max(e.acts))
    score_examples = [window(*score[i]) for i in torch.randperm(len(score), generator=generator).tolist()]
    return explain_examples, score_examples


# --- the API client --------------------------------------------------------------------------


def chat_completion(config: JudgeConfig, messages: Messages, max_tokens: int) -> str:
    """One reply from ``{base_url}/chat/completions``; retries on 429, 5xx and connection
    errors with exponential backoff; raises :class:`JudgeError` otherwise."""
    if not judge_configured(config):
        raise JudgeError("no judge configured: set JudgeConfig.base_url and JudgeConfig.model")
    url = config.base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": config.model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": config.temperature}).encode()
    headers = {"Content-Type": "application/json"}
    key = config.api_key or os.environ.get(config.api_key_env, "")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for attempt in range(config.max_retries + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                reply = json.loads(response.read().decode())
            content = reply["choices"][0]["message"]["content"]
            return (content or "").strip()
        except urllib.error.HTTPError as error:
            retry = error.code == 429 or error.code >= 500
            problem = f"HTTP {error.code} from {url}: {error.read()[:300].decode(errors='replace')}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            retry, problem = True, f"cannot reach {url}: {error}"
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
            raise JudgeError(f"{url} answered with something that is not a chat completion ({error!r})") from error
        if not retry or attempt == config.max_retries:
            raise JudgeError(problem)
        time.sleep(config.retry_backoff_s * 2**attempt)
    raise AssertionError("unreachable")


# --- the evaluation --------------------------------------------------------------------------


def judge_latent(config: JudgeConfig, explain_examples: list[Example], score_examples: list[Example],
                 example_answer: list[int]) -> dict[str, Any]:
    """Explain one latent, then score the explanation on the detection task."""
    explanation = parse_explanation(chat_completion(
        config, explanation_messages(explain_examples, config.use_demos), config.max_tokens_explanation))
    answer = chat_completion(config, detection_messages(explanation, score_examples, example_answer),
                             2 * len(score_examples) + 5)  # comma-separated one-token numbers
    predicted = parse_detection_answer(answer, len(score_examples))
    return {
        "explanation": explanation,
        "answer": answer,
        "predicted": predicted,
        "active": [i for i, ex in enumerate(score_examples, start=1) if ex.is_active],
        "malformed": predicted is None,
        "score": detection_score(predicted, score_examples),
    }


def autointerp_scores(token_strings: Sequence[Sequence[str]], acts: torch.Tensor, latents: Sequence[int] | None,
                      config: JudgeConfig, seed: int = 0) -> dict[str, Any]:
    """Detection scores of up to ``config.max_latents`` latents.

    Args:
        token_strings: ``n_seq`` sequences of ``seq_len`` token strings (as the tokenizer
            decodes them, leading spaces included: they are joined without separators).
        acts: (n_seq, seq_len, d_sae) latent activations on those tokens (BOS/pad zeroed).
        latents: the latents to consider, or ``None`` for all that fire; a seeded sample of
            ``config.max_latents`` of them is judged.

    Returns a dict: ``score`` (mean over judged latents) and ``std``, ``n_latents``,
    ``n_malformed`` (answers that were no list of examples: scored 0, with a warning),
    ``n_errors`` (latents whose API calls failed: left out, with a warning), ``per_latent``
    {latent: explanation, answer, predicted, active, malformed, score}, and ``skipped``
    (``None``, or why nothing was judged: no judge configured, or no latent fires).
    """
    n_seq, seq_len = _check_inputs(token_strings, acts, config)
    if not judge_configured(config):
        return _skipped("no judge configured (JudgeConfig.base_url and JudgeConfig.model are empty)")
    fires = (acts.reshape(-1, acts.shape[-1]) > 0).any(0)  # (d_sae,)
    if latents is None:
        candidates = fires.nonzero().squeeze(1).tolist()
    else:
        candidates = sorted({int(i) for i in latents})
        if candidates and not 0 <= candidates[0] <= candidates[-1] < acts.shape[-1]:
            raise ValueError(f"latents must be in 0..{acts.shape[-1] - 1}")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, min(config.max_latents, len(candidates))))

    # Everything random is drawn here, in latent order, so results do not depend on threads.
    generator = torch.Generator().manual_seed(seed)
    jobs = {}
    for latent in chosen:
        examples = latent_examples(token_strings, acts[..., latent].float().cpu(), config, generator)
        if examples is not None:
            n_correct = config.n_top_for_scoring + config.n_weighted_for_scoring
            sample = sorted(rng.sample(range(1, len(examples[1]) + 1), min(n_correct, len(examples[1]))))
            jobs[latent] = (*examples, sample)
    if not jobs:
        return _skipped("none of the chosen latents fires away from the sequence ends")

    def run(latent):
        try:
            return latent, judge_latent(config, *jobs[latent])
        except JudgeError as error:
            return latent, {"error": str(error)}

    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        per_latent = dict(pool.map(run, sorted(jobs)))
    errors = [lat for lat, r in per_latent.items() if "error" in r]
    if len(errors) == len(per_latent):
        raise JudgeError(f"every judge call failed; the first: {per_latent[errors[0]]['error']}")
    if errors:
        warnings.warn(f"autointerp: the judge failed on {len(errors)} latents ({errors[:5]}...); they are left out", stacklevel=2)
    malformed = [lat for lat, r in per_latent.items() if r.get("malformed")]
    if malformed:
        warnings.warn(f"autointerp: {len(malformed)} detection answers were not a list of examples "
                      f"(latents {malformed[:5]}); each is scored 0", stacklevel=2)
    scores = torch.tensor([r["score"] for r in per_latent.values() if "error" not in r], dtype=torch.float64)
    return {
        "score": float(scores.mean()),
        "std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "n_latents": scores.numel(),
        "n_malformed": len(malformed),
        "n_errors": len(errors),
        "per_latent": per_latent,
        "skipped": None,
    }


def _skipped(reason: str) -> dict[str, Any]:
    return {"score": math.nan, "std": math.nan, "n_latents": 0, "n_malformed": 0, "n_errors": 0,
            "per_latent": {}, "skipped": reason}


def _check_inputs(token_strings, acts: torch.Tensor, config: JudgeConfig) -> tuple[int, int]:
    if acts.dim() != 3:
        raise ValueError(f"acts must be (n_seq, seq_len, d_sae), got shape {tuple(acts.shape)}")
    n_seq, seq_len, _ = acts.shape
    if len(token_strings) != n_seq or any(len(seq) != seq_len for seq in token_strings):
        raise ValueError(f"token_strings must be {n_seq} sequences of {seq_len} tokens, like acts {tuple(acts.shape)}")
    if seq_len < 2 * config.window_buffer + 1:
        raise ValueError(f"sequences of {seq_len} tokens are too short for windows of "
                         f"2 * {config.window_buffer} + 1 tokens; lower JudgeConfig.window_buffer")
    if not bool(torch.isfinite(acts).all()):
        raise ValueError("acts contain NaN or inf")
    return n_seq, seq_len
