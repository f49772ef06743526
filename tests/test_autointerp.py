"""The autointerp client against a fake OpenAI-compatible judge on localhost (no network)."""

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from msae.evals.autointerp import (
    Example,
    JudgeConfig,
    JudgeError,
    autointerp_scores,
    chat_completion,
    detection_messages,
    detection_score,
    explanation_messages,
    judge_configured,
    latent_examples,
    parse_detection_answer,
    parse_explanation,
    top_windows,
)

WORDS = ["the", "a", "sun", "tree", "ran", "big", "small", "home", "red", "sky", "hat", "box", "sea", "hill", "road",
         "cup", "cat", "dog", "bird", "fish"]
API_KEY = "test-key"


class FakeJudge(BaseHTTPRequestHandler):
    """Explains a latent by its most frequent marked word. Asked to detect, it lists the
    examples containing the explained word for "cat" (right), the other examples for "dog"
    (all wrong), a sentence for "bird" (malformed), and fails with HTTP 500 the first time
    it is asked about "fish" (a retry succeeds)."""

    requests: list = []
    fish_failures = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._reply(404 if self.path != "/v1/chat/completions" else 401, {"error": "no"})
        FakeJudge.requests.append(body)
        user = body["messages"][-1]["content"]
        if "Here is the explanation" in user:
            word = re.search(r"this neuron fires on the word (\w+)\.", user).group(1)
            if word == "fish" and FakeJudge.fish_failures == 0:
                FakeJudge.fish_failures += 1
                return self._reply(500, {"error": "busy"})
            examples = re.findall(r"^(\d+)\. (.*)$", user.split("Here are the examples:")[1], flags=re.M)
            has_word = [int(i) for i, text in examples if re.search(rf"\b{word}\b", text)]
            if word == "dog":
                answer_ids = [int(i) for i, _ in examples if int(i) not in has_word]
            else:
                answer_ids = has_word
            answer = ", ".join(map(str, answer_ids)) or "None"
            if word == "bird":
                answer = "I believe it is the third and the fifth one."
        else:
            marked = re.findall(r"<<\s*(\w+)>>", user)
            answer = f"This neuron activates on the word {max(set(marked), key=marked.count)}."
        self._reply(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    FakeJudge.requests, FakeJudge.fish_failures = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def corpus(gen, n_seq=40, seq_len=24):
    """Token strings with leading spaces, and latents 0..3 firing on " cat", " dog", " bird",
    " fish" (random positive sizes); latent 4 never fires."""
    ids = torch.randint(len(WORDS), (n_seq, seq_len), generator=gen)
    token_strings = [[" " + WORDS[i] for i in row] for row in ids.tolist()]
    acts = torch.zeros(n_seq, seq_len, 5)
    for latent, word in enumerate(["cat", "dog", "bird", "fish"]):
        on = ids == WORDS.index(word)
        acts[..., latent] = on * (0.5 + torch.rand(n_seq, seq_len, generator=gen))
    return token_strings, acts


def config(url, **overrides):
    return JudgeConfig(**{**dict(base_url=url, model="fake-judge", api_key=API_KEY, window_buffer=3,
                                 n_top_for_explanation=4, n_weighted_for_explanation=2, n_top_for_scoring=2,
                                 n_weighted_for_scoring=2, n_random_for_scoring=6, retry_backoff_s=0.01,
                                 workers=2), **overrides})


def test_fake_judge_scores_right_wrong_and_malformed_answers(gen, seed, judge_url):
    token_strings, acts = corpus(gen)
    with pytest.warns(UserWarning, match="not a list of examples"):
        result = autointerp_scores(token_strings, acts, [0, 1, 2, 3, 4], config(judge_url), seed=seed)
    per = result["per_latent"]
    assert set(per) == {0, 1, 2, 3}  # latent 4 never fires: nothing to judge
    assert [per[i]["explanation"] for i in range(4)] == [f"the word {w}" for w in ("cat", "dog", "bird", "fish")]
    assert per[0]["score"] == 1.0 and per[0]["predicted"] == per[0]["active"]
    assert per[1]["score"] == 0.0 and not per[1]["malformed"]
    assert per[2]["score"] == 0.0 and per[2]["malformed"] and per[2]["predicted"] is None
    assert per[3]["score"] == 1.0 and FakeJudge.fish_failures == 1  # answered after one retry
    assert result["score"] == pytest.approx(0.5) and result["n_latents"] == 4
    assert result["n_malformed"] == 1 and result["n_errors"] == 0 and result["skipped"] is None
    # Scoring sets mix active and inactive windows (so scores 1 and 0 are not trivial); a latent's
    # random windows may all happen to hold its word, so the inactive ones are counted over all four.
    n_scoring = config(judge_url).n_scoring_examples
    assert all(0 < len(per[i]["active"]) <= n_scoring for i in range(4))
    assert sum(n_scoring - len(per[i]["active"]) for i in range(4)) > 0


def test_results_do_not_depend_on_threads(gen, seed, judge_url):
    token_strings, acts = corpus(gen)
    one = autointerp_scores(token_strings, acts, [0, 1], config(judge_url, workers=1), seed=seed)
    four = autointerp_scores(token_strings, acts, [0, 1], config(judge_url, workers=4), seed=seed)
    assert one["per_latent"] == four["per_latent"]


@pytest.mark.filterwarnings("ignore:autointerp")  # the sample may hold the malformed "bird" latent
def test_max_latents_samples_alive_latents(gen, seed, judge_url):
    token_strings, acts = corpus(gen)
    result = autointerp_scores(token_strings, acts, None, config(judge_url, max_latents=2), seed=seed)
    assert len(result["per_latent"]) == 2 and set(result["per_latent"]) <= {0, 1, 2, 3}


def test_unconfigured_judge_is_a_clear_skip(gen):
    token_strings, acts = corpus(gen)
    assert not judge_configured(JudgeConfig())
    assert not judge_configured(JudgeConfig(base_url="http://localhost:1/v1"))
    assert not judge_configured(JudgeConfig(model="m"))
    assert judge_configured(JudgeConfig(base_url="http://localhost:1/v1", model="m"))
    result = autointerp_scores(token_strings, acts, None, JudgeConfig(window_buffer=3))
    assert "no judge configured" in result["skipped"] and math.isnan(result["score"]) and result["per_latent"] == {}
    with pytest.raises(JudgeError, match="no judge configured"):
        chat_completion(JudgeConfig(), [{"role": "user", "content": "hi"}], 5)


def test_api_key_stays_out_of_repr_and_bad_key_fails(judge_url):
    assert API_KEY not in repr(config(judge_url))
    with pytest.raises(JudgeError, match="HTTP 401"):
        chat_completion(config(judge_url, api_key="wrong"), [{"role": "user", "content": "hi"}], 5)


def test_unreachable_judge_raises_after_retries(gen):
    token_strings, acts = corpus(gen)
    dead = config("http://127.0.0.1:9/v1", max_retries=1, timeout_s=2)  # port 9: discard, nothing listens
    with pytest.raises(JudgeError, match="every judge call failed"):
        autointerp_scores(token_strings, acts, [0], dead)


def test_prompt_builder_marks_active_tokens(gen):
    acts = torch.rand(6, generator=gen) * 0.001
    acts[[1, 4]] = 1 + torch.rand(2, generator=gen)
    example = Example([" the", " cat", " sat", "\n", " on", " it"], acts.tolist(), threshold=0.01)
    assert example.text(mark=True) == " the<< cat>> sat\u21b5<< on>> it"
    assert example.text() == " the cat sat\u21b5 on it"
    messages = explanation_messages([example])
    assert messages[0]["role"] == "system" and "1.  the<< cat>> sat" in messages[1]["content"]
    quiet = Example([" a", " b"], [0.0, 0.005], threshold=0.01)
    scoring = detection_messages("cats", [example, quiet], [2])
    assert "<<" not in scoring[1]["content"] and "1.  the cat sat" in scoring[1]["content"]
    assert "fires on cats." in scoring[1]["content"] and '"2"' in scoring[0]["content"]
    assert detection_score([1], [example, quiet]) == 1.0
    assert detection_score([2], [example, quiet]) == 0.0
    assert detection_score(None, [example, quiet]) == 0.0


def test_parsers():
    assert parse_explanation("This neuron activates on the word cat.") == "the word cat"
    assert parse_explanation("  female names ") == "female names"
    assert parse_detection_answer("2, 5, 9", 10) == [2, 5, 9]
    assert parse_detection_answer(" 9,2 and 5.", 10) == [2, 5, 9]
    assert parse_detection_answer("[3, 1]", 10) == [1, 3]
    assert parse_detection_answer("None", 10) == [] and parse_detection_answer('"none"', 10) == []
    assert parse_detection_answer("Examples 2 and 3", 10) is None
    assert parse_detection_answer("2, 11", 10) is None  # no example 11
    assert parse_detection_answer("0", 10) is None
    assert parse_detection_answer("two", 10) is None


def test_examples_follow_the_activations(gen, seed):
    token_strings, acts = corpus(gen)
    cfg = JudgeConfig(window_buffer=3, n_top_for_explanation=4, n_weighted_for_explanation=2, n_top_for_scoring=2,
                      n_weighted_for_scoring=2, n_random_for_scoring=6)
    cat = acts[..., 0]
    explain, score = latent_examples(token_strings, cat, cfg, torch.Generator().manual_seed(seed))
    assert len(explain) == 6 and len(score) == 10
    tops = [max(e.acts) for e in explain]
    assert tops == sorted(tops, reverse=True)
    for example in explain + score:
        assert len(example.tokens) == 7
        # marked tokens are exactly the cat tokens (every cat activation is >= 0.5 > 1% of the max)
        assert [t == " cat" for t in example.tokens] == example.active_tokens
    # The top windows hold the largest activations, centred, without overlaps.
    windows = top_windows(cat, 6, 3)
    inner = cat[:, 3:-3]
    assert float(cat[windows[0]]) == float(inner.max())
    for i, (s1, c1) in enumerate(windows):
        for s2, c2 in windows[i + 1 :]:
            assert s1 != s2 or abs(c1 - c2) > 3
    assert latent_examples(token_strings, acts[..., 4], cfg, torch.Generator()) is None


def test_input_validation(gen):
    token_strings, acts = corpus(gen)
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", window_buffer=3)
    with pytest.raises(ValueError, match="n_seq, seq_len, d_sae"):
        autointerp_scores(token_strings, acts[0], None, cfg)
    with pytest.raises(ValueError, match="sequences of"):
        autointerp_scores(token_strings[:-1], acts, None, cfg)
    with pytest.raises(ValueError, match="too short"):
        autointerp_scores(token_strings, acts, None, JudgeConfig(window_buffer=20))
    bad = acts.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        autointerp_scores(token_strings, bad, None, cfg)
    with pytest.raises(ValueError, match="latents must be"):
        autointerp_scores(token_strings, acts, [7], cfg)
