import pytest
import torch

from msae.evals.concepts import (
    ConceptCounts,
    absorbing_latents,
    concept_f1,
    concept_f1_from_chunks,
    general_latent,
    holes,
    interpretability_summary,
)


def random_concepts(gen, n_tokens, n_concepts, p=0.2):
    return torch.rand(n_tokens, n_concepts, generator=gen) < p


def brute_force_f1(acts, concepts, threshold):
    """F1 of every (latent, concept) pair by counting tokens one pair at a time, in float64."""
    fires = acts > threshold
    f1 = torch.zeros(acts.shape[1], concepts.shape[1], dtype=torch.float64)
    for i in range(acts.shape[1]):
        for c in range(concepts.shape[1]):
            tp = int((fires[:, i] & concepts[:, c]).sum())
            fp = int((fires[:, i] & ~concepts[:, c]).sum())
            fn = int((~fires[:, i] & concepts[:, c]).sum())
            f1[i, c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return f1


def test_latent_equal_to_a_concept_gets_f1_one_and_that_concept(gen):
    n_tokens, n_concepts = 400, 6
    concepts = random_concepts(gen, n_tokens, n_concepts, p=0.3)
    target = int(torch.randint(n_concepts, (), generator=gen))
    magnitudes = torch.rand(n_tokens, generator=gen) + 0.1
    acts = torch.zeros(n_tokens, 3)
    acts[:, 1] = concepts[:, target] * magnitudes  # fires exactly on the concept
    acts[:, 0] = torch.rand(n_tokens, generator=gen) * (torch.rand(n_tokens, generator=gen) < 0.5)
    best = concept_f1(acts, concepts)
    assert best.f1[1] == 1.0 and best.concept[1] == target
    assert best.f1[2] == 0.0 and best.concept[2] == -1  # never fires
    assert best.f1[0] < 0.9


def test_latent_on_half_of_a_concept_gets_two_thirds(gen):
    n_tokens = 600
    concept = torch.zeros(n_tokens, dtype=torch.bool)
    members = torch.randperm(n_tokens, generator=gen)[:200]
    concept[members] = True
    acts = torch.zeros(n_tokens, 1)
    acts[members[:100], 0] = torch.rand(100, generator=gen) + 0.5  # half the concept, nothing else
    best = concept_f1(acts, concept[:, None])
    # precision 1, recall 1/2: F1 = 2 * 1 * 0.5 / 1.5
    assert best.f1[0] == pytest.approx(2 / 3, abs=1e-12)


def test_random_latents_score_low(gen):
    n_tokens, d_sae, n_concepts = 3000, 40, 10
    concepts = random_concepts(gen, n_tokens, n_concepts, p=0.05)
    acts = torch.relu(torch.randn(n_tokens, d_sae, generator=gen) - 1.6)  # fire on ~5% of tokens
    best = concept_f1(acts, concepts)
    assert best.f1.max() < 0.2


def test_matches_brute_force_on_random_binary_data(gen):
    n_tokens, d_sae, n_concepts = 200, 15, 5
    concepts = random_concepts(gen, n_tokens, n_concepts, p=0.3)
    acts = torch.randn(n_tokens, d_sae, generator=gen) * (torch.rand(n_tokens, d_sae, generator=gen) < 0.3)
    threshold = 0.2
    reference = brute_force_f1(acts, concepts, threshold)
    best = concept_f1(acts, concepts, threshold=threshold)
    torch.testing.assert_close(best.f1, reference.max(1).values, rtol=0, atol=1e-12)
    chosen = reference.gather(1, best.concept.clamp_min(0)[:, None])[:, 0]
    torch.testing.assert_close(chosen, best.f1, rtol=0, atol=1e-12)

    # The same from a sparse tensor and from a stream of chunks.
    sparse = concept_f1(acts.to_sparse(), concepts, threshold=threshold)
    torch.testing.assert_close(sparse.f1, best.f1)
    assert torch.equal(sparse.concept, best.concept)
    chunks = [(acts[i : i + 48], concepts[i : i + 48]) for i in range(0, n_tokens, 48)]
    streamed = concept_f1_from_chunks(chunks, d_sae, n_concepts, threshold=threshold)
    torch.testing.assert_close(streamed.f1, best.f1)

    counts = ConceptCounts(d_sae, n_concepts, threshold)
    counts.update(acts, concepts)
    torch.testing.assert_close(counts.f1(), reference, rtol=0, atol=1e-12)


def test_chunking_inside_one_call(gen, monkeypatch):
    import msae.evals.concepts as concepts_module

    monkeypatch.setattr(concepts_module, "_CHUNK_ENTRIES", 7 * 13)  # 7 tokens per chunk of 13 latents
    n_tokens, d_sae, n_concepts = 100, 13, 4
    concepts = random_concepts(gen, n_tokens, n_concepts, p=0.4)
    acts = torch.relu(torch.randn(n_tokens, d_sae, generator=gen))
    reference = brute_force_f1(acts, concepts, 0.0)
    torch.testing.assert_close(concept_f1(acts, concepts).f1, reference.max(1).values, rtol=0, atol=1e-12)


def test_summary_over_alive_latents(gen):
    best_f1 = torch.rand(50, generator=gen, dtype=torch.float64)
    alive = torch.rand(50, generator=gen) < 0.6
    alive[0] = True
    summary = interpretability_summary(best_f1, alive)
    kept = [float(v) for v, a in zip(best_f1, alive) if a]
    assert summary["mean_f1"] == pytest.approx(sum(kept) / len(kept))
    assert summary["fraction_above"] == pytest.approx(sum(v > 0.5 for v in kept) / len(kept))
    assert summary["n_alive"] == len(kept)
    with pytest.raises(ValueError, match="alive"):
        interpretability_summary(best_f1, torch.zeros(50, dtype=torch.bool))


def test_input_validation(gen):
    acts = torch.rand(10, 4, generator=gen)
    with pytest.raises(ValueError, match="tokens"):
        concept_f1(acts, torch.zeros(9, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_tokens, d_sae"):
        concept_f1(acts[:, 0], torch.zeros(10, 2, dtype=torch.bool))
    bad = acts.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        concept_f1(bad, torch.zeros(10, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        concept_f1(acts, torch.full((10, 2), 2))
    with pytest.raises(ValueError, match="out of range"):
        holes(acts, 4, torch.zeros(10, dtype=torch.bool))


def fig4_case(gen):
    """A story-like stream: "female" tokens are names (Lily, Sue, Anna) and other words (she,
    girl, her, woman). A general "female" latent fires on all of them except Lily and Sue,
    where a "Lily" and a "Sue" latent fire instead (absorption); a "name" latent fires on
    every name, Tom included. The rest are noise latents on non-female tokens."""
    n_tokens, d_sae = 600, 12
    # 0 other, 1 Lily, 2 Sue, 3 Anna, 4 she, 5 girl, 6 her, 7 woman, 8 Tom
    kind = torch.randint(0, 9, (n_tokens,), generator=gen)
    female = (kind >= 1) & (kind <= 7)
    names = ((kind >= 1) & (kind <= 3)) | (kind == 8)
    general, lily, sue, name = 3, 7, 5, 9
    acts = torch.zeros(n_tokens, d_sae)
    positive = lambda mask: mask * (torch.rand(n_tokens, generator=gen) + 0.5)  # noqa: E731
    acts[:, general] = positive(female & (kind != 1) & (kind != 2))  # F1 about 5/6
    acts[:, lily] = positive(kind == 1)
    acts[:, sue] = positive(kind == 2)
    acts[:, name] = positive(names)  # F1 against "female" about 6/11
    for noise in (0, 1, 2):
        acts[:, noise] = positive((kind == 0) & (torch.rand(n_tokens, generator=gen) < 0.5))
    return acts, kind, female, dict(general=general, lily=lily, sue=sue, name=name)


def test_general_latent_holes_and_absorbing_latents(gen):
    acts, kind, female, latent = fig4_case(gen)
    found = general_latent(acts, female)
    n_lily, n_sue, n_female = int((kind == 1).sum()), int((kind == 2).sum()), int(female.sum())
    assert found.latent == latent["general"]
    assert found.precision == 1.0
    assert found.recall == pytest.approx((n_female - n_lily - n_sue) / n_female)

    hole_tokens = holes(acts, latent["general"], female)
    assert torch.equal(hole_tokens, ((kind == 1) | (kind == 2)).nonzero().squeeze(1))

    absorbing = absorbing_latents(acts, latent["general"], female, top=10)
    assert absorbing.n_holes == n_lily + n_sue
    # The name latent fires on every hole; then Lily and Sue by how many holes each fills.
    by_size = sorted([(n_lily, latent["lily"]), (n_sue, latent["sue"])], key=lambda t: (-t[0], t[1]))
    assert absorbing.latents.tolist() == [latent["name"]] + [lat for _, lat in by_size]
    assert absorbing.holes_covered.tolist() == [n_lily + n_sue] + [n for n, _ in by_size]
    assert absorbing.fraction_of_holes[0] == 1.0
    assert absorbing_latents(acts, latent["general"], female, top=1).latents.tolist() == [latent["name"]]

    # Sparse activations give the same answers.
    sparse = acts.to_sparse()
    assert general_latent(sparse, female).latent == latent["general"]
    assert torch.equal(holes(sparse, latent["general"], female), hole_tokens)
    assert torch.equal(absorbing_latents(sparse, latent["general"], female).latents, absorbing.latents)


def test_latent_without_holes(gen):
    acts, kind, female, latent = fig4_case(gen)
    whole = acts.clone()
    whole[:, latent["general"]] = female * 1.0  # a Matryoshka-like general latent: no holes
    assert holes(whole, latent["general"], female).numel() == 0
    result = absorbing_latents(whole, latent["general"], female)
    assert result.n_holes == 0 and result.latents.numel() == 0
    assert general_latent(whole, female).f1 == 1.0


def test_empty_concept_is_an_error(gen):
    with pytest.raises(ValueError, match="no token"):
        general_latent(torch.rand(10, 3, generator=gen), torch.zeros(10, dtype=torch.bool))
