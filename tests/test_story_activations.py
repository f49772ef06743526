import pytest
import torch

from lm_helpers import tiny_model
from msae.data.stories import generate_stories
from msae.data.story_activations import (
    TextActivations,
    collect_text_activations,
    encode_tokens,
    pooled,
    pooled_resid,
    story_activations,
)
from msae.saes.base import InferenceSAE

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=2)


@pytest.fixture
def stories(seed):
    return generate_stories(5, seed)


@pytest.fixture
def acts(model, stories):
    return collect_text_activations(model, HOOK, [s.text for s in stories], context_size=200, batch_size=2,
                                    spans=[s.spans for s in stories], labels=[s.labels for s in stories],
                                    progress=False, dtype=torch.float32)


def random_sae(d_in, d_sae, gen):
    sae = InferenceSAE(d_in, d_sae)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen))
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.1)
    return sae


def test_shapes_and_mask(model, stories, acts):
    tokenizer = model.tokenizer
    lengths = [len(tokenizer(s.text)["input_ids"]) for s in stories]
    n, ctx = acts.tokens.shape
    assert (n, ctx) == (5, max(lengths))
    assert acts.resid.shape == (5, ctx, model.cfg.d_model) and acts.token_concepts.shape == (5, ctx, len(acts.concepts))
    special = set(tokenizer.all_special_ids)
    for i, length in enumerate(lengths):
        assert not acts.mask[i, length:].any()  # padding
        assert (acts.tokens[i, length:] == tokenizer.pad_token_id).all()
        assert not acts.mask[i, 0]  # the first position, as in training
        expected = [t not in special for t in acts.tokens[i, 1:length].tolist()]
        assert acts.mask[i, 1:length].tolist() == expected
    assert (acts.resid[~acts.mask] == 0).all()
    assert acts.labels == [s.labels for s in stories] and acts.texts == [s.text for s in stories]


def test_truncation_to_context_size(model, stories):
    short = collect_text_activations(model, HOOK, [s.text for s in stories], context_size=9, progress=False)
    assert short.tokens.shape == (5, 9) and not short.mask[:, 0].any()
    assert short.concepts == [] and short.token_concepts.shape == (5, 9, 0)


def test_resid_equals_a_direct_run(model, stories, acts):
    """Each text run alone, unpadded: the padded, length-sorted batches change nothing."""
    for i, story in enumerate(stories):
        ids = model.tokenizer(story.text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=HOOK)
        direct = cache[HOOK][0]
        keep = acts.mask[i, : ids.shape[1]]
        torch.testing.assert_close(acts.resid[i, : ids.shape[1]][keep], direct[keep], rtol=1e-5, atol=1e-5)


def test_float16_storage_is_close(model, stories, acts):
    half = collect_text_activations(model, HOOK, [s.text for s in stories], context_size=200, progress=False)
    assert half.resid.dtype == torch.float16
    torch.testing.assert_close(half.resid.float(), acts.resid, rtol=2e-3, atol=2e-3)


def test_token_concepts_mark_the_tagged_name(model, stories, acts):
    """With the word-level tokenizer each word is one token: the tokens tagged name:<hero> are
    exactly the tokens whose text is the hero's name, and they carry the family "name" and the
    hero's gender."""
    for i, story in enumerate(stories):
        hero = story.labels["name"]
        offsets = model.tokenizer(story.text, return_offsets_mapping=True)["offset_mapping"]
        real = torch.arange(acts.tokens.shape[1]) < len(offsets)
        spelled = torch.zeros_like(real)
        spelled[: len(offsets)] = torch.tensor([story.text[a:b] == hero for a, b in offsets])
        tagged = acts.concept_mask(f"name:{hero}")[i]
        assert spelled.any() and torch.equal(tagged, spelled)
        assert acts.concept_mask("name")[i][tagged].all()
        assert acts.concept_mask(story.labels["gender"])[i][tagged].all()
        assert not acts.token_concepts[i, ~real].any()
    assert "sentiment" in acts.concepts and "animal" in acts.concepts


def test_save_and_load_round_trip(acts, tmp_path):
    path = tmp_path / "acts.pt"
    acts.save(path)
    loaded = TextActivations.load(path)
    for name in ("tokens", "mask", "resid", "token_concepts"):
        assert torch.equal(getattr(loaded, name), getattr(acts, name)), name
    assert loaded.concepts == acts.concepts and loaded.labels == acts.labels and loaded.texts == acts.texts
    assert loaded.hook_name == HOOK
    (tmp_path / "other.pt").write_bytes(b"not a file of ours")
    with pytest.raises(ValueError, match="other.pt is not a text-activations file"):
        TextActivations.load(tmp_path / "other.pt")


def test_story_activations_are_cached(model, seed, tmp_path):
    first = story_activations(model, HOOK, 3, seed, 64, tmp_path, model_name="tiny", progress=False)
    files = list(tmp_path.glob("story_activations_*.pt"))
    assert len(files) == 1
    again = story_activations(model, HOOK, 3, seed, 64, tmp_path, model_name="tiny", progress=False)
    assert torch.equal(first.resid, again.resid) and first.labels == again.labels
    assert first.texts == [s.text for s in generate_stories(3, seed)]
    story_activations(model, HOOK, 3, seed + 1, 64, tmp_path, model_name="tiny", progress=False)
    assert len(list(tmp_path.glob("story_activations_*.pt"))) == 2  # another corpus, another file


def test_pooled_and_token_encodings(acts, gen):
    sae = random_sae(acts.d_model, 40, gen)
    with torch.no_grad():
        per_token = sae.encode(acts.resid[acts.mask])  # (n_kept, d_sae), row-major order of the mask
    torch.testing.assert_close(encode_tokens(sae, acts, chunk=2), per_token)
    torch.testing.assert_close(encode_tokens(sae, acts, chunk=3, latents=[3, 0, 7]), per_token[:, [3, 0, 7]])
    rows = acts.mask.nonzero()[:, 0]
    for i in range(acts.n_texts):
        torch.testing.assert_close(pooled(sae, acts, chunk=2)[i], per_token[rows == i].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pooled_resid(acts, chunk=2)[i], acts.resid[i][acts.mask[i]].mean(0), rtol=1e-5, atol=1e-6)


def test_bad_inputs(model, stories):
    texts = [s.text for s in stories]
    with pytest.raises(ValueError, match="hook point"):
        collect_text_activations(model, "blocks.9.hook_resid_post", texts, progress=False)
    with pytest.raises(ValueError, match="span lists"):
        collect_text_activations(model, HOOK, texts, spans=[[]], progress=False)
    with pytest.raises(ValueError, match="no texts"):
        collect_text_activations(model, HOOK, [], progress=False)


def test_cached_story_activations_leave_out_the_first_positions_asked(model, tmp_path, seed):
    default = story_activations(model, HOOK, 6, seed, 40, tmp_path, model_name="tiny", progress=False)
    three = story_activations(model, HOOK, 6, seed, 40, tmp_path, model_name="tiny", progress=False, exclude_first=3)
    assert len(list(tmp_path.glob("story_activations_*.pt"))) == 2  # cached under different keys
    assert not default.mask[:, :1].any() and default.mask[:, 1:3].any()
    assert not three.mask[:, :3].any()
    assert torch.equal(three.mask, default.mask & (torch.arange(default.mask.shape[1]) >= 3))
