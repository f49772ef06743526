"""Latent trees (App. F): the directed masked cosine against a brute-force loop, and planted
hierarchies whose tree is known."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from msae.evals.latent_trees import Node, build_tree, directed_similarity, encode_sparse, matryoshka_tree


def brute_force_similarity(parents: np.ndarray, children: np.ndarray) -> np.ndarray:
    sim = np.zeros((parents.shape[1], children.shape[1]))
    for a in range(parents.shape[1]):
        for b in range(children.shape[1]):
            mask = children[:, b] > 0
            pa, cb = parents[mask, a], children[mask, b]
            if not mask.any() or not pa.any():
                continue
            cosine = pa @ cb / (np.linalg.norm(pa) * np.linalg.norm(cb))
            sim[a, b] = cosine * children[:, b].max() / parents[:, a].max()
    return sim


def random_codes(rng, n_tokens, n_latents, density):
    dense = rng.exponential(size=(n_tokens, n_latents)) * (rng.random((n_tokens, n_latents)) < density)
    dense[:, 0] = 0.0  # one latent that never fires
    return dense


def test_directed_similarity_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    parents, children = random_codes(rng, 300, 7, 0.3), random_codes(rng, 300, 11, 0.2)
    fast = directed_similarity(sp.csr_matrix(parents.astype(np.float32)), sp.csr_matrix(children.astype(np.float32)))
    np.testing.assert_allclose(fast, brute_force_similarity(parents, children), rtol=1e-5, atol=1e-6)
    assert (fast[0] == 0).all() and (fast[:, 0] == 0).all()


def test_directed_similarity_rejects_bad_input():
    with pytest.raises(ValueError, match="different tokens"):
        directed_similarity(sp.csr_matrix(np.ones((3, 2))), sp.csr_matrix(np.ones((4, 2))))
    with pytest.raises(ValueError, match="non-negative"):
        directed_similarity(sp.csr_matrix(-np.ones((3, 2))), sp.csr_matrix(np.ones((3, 2))))


def planted_levels(rng, n_tokens=6000, n_roots=4, branching=3, depth=3, n_unrelated=3, loud_root=True):
    """Levels of latents where each child fires on a share of its parent's tokens (mutually
    exclusive siblings) at the parent's magnitude times a child scale; plus, per level, latents
    that fire independently, and in the first level a loud latent that fires on every token.
    Returns (levels as dense arrays, true parent of each planted (level, latent))."""
    magnitude = rng.uniform(0.5, 1.5, size=n_tokens)
    level_acts, truth = [], {}
    roots = (rng.random((n_tokens, n_roots)) < 0.12) * magnitude[:, None] * rng.uniform(0.8, 1.2, n_roots)
    previous = roots
    level_acts.append(roots)
    for level in range(1, depth):
        n_parents = previous.shape[1]
        kids = np.zeros((n_tokens, n_parents * branching))
        pick = rng.integers(0, branching + 1, size=(n_tokens, n_parents))  # branching = no child fires
        for p in range(n_parents):
            for c in range(branching):
                column = p * branching + c
                on = (previous[:, p] > 0) & (pick[:, p] == c)
                scale = rng.uniform(0.8, 1.2)
                kids[on, column] = previous[on, p] * scale * rng.uniform(0.95, 1.05, size=on.sum())
                truth[Node(level, column)] = Node(level - 1, p)
        level_acts.append(kids)
        previous = kids
    for level in range(depth):
        unrelated = (rng.random((n_tokens, n_unrelated)) < 0.1) * rng.uniform(0.5, 1.5, size=(n_tokens, n_unrelated))
        level_acts[level] = np.concatenate([level_acts[level], unrelated], axis=1)
    if loud_root:
        level_acts[0] = np.concatenate([level_acts[0], np.full((n_tokens, 1), 10.0)], axis=1)
    return level_acts, truth


def test_planted_three_level_tree_is_recovered(seed):
    rng = np.random.default_rng(seed)
    levels, truth = planted_levels(rng)
    tree = build_tree([sp.csr_matrix(level) for level in levels])
    assert tree.parent == truth  # every planted child under its parent; no unrelated latent attached
    assert all(tree.score[node] >= 0.6 for node in truth)
    roots_with_children = [r for r in tree.roots() if tree.children(r)]
    assert len(roots_with_children) == 4 and all(tree.depth(r) == 2 for r in roots_with_children)
    assert len(tree.descendants(roots_with_children[0])) == 3 + 9
    rows = tree.level_rows()
    assert [r["attached"] for r in rows] == [12, 36]
    assert [r["latents"] for r in rows] == [12 + 3, 36 + 3]


def test_the_scale_keeps_a_loud_dense_latent_from_adopting_everything(seed):
    rng = np.random.default_rng(seed)
    levels, truth = planted_levels(rng, depth=2, n_unrelated=0)
    parents, children = sp.csr_matrix(levels[0]), sp.csr_matrix(levels[1])
    sim = directed_similarity(parents, children)
    loud = levels[0].shape[1] - 1
    unscaled = sim * (levels[0].max(axis=0)[:, None] / levels[1].max(axis=0)[None, :])
    # the plain masked cosine prefers the loud latent for some child; the scaled one never
    assert (unscaled[loud] > 0.6).any()
    assert (sim.argmax(axis=0) != loud).all() and sim[loud].max() < 0.6


def test_similarity_is_directed(seed):
    rng = np.random.default_rng(seed)
    # each of 5 exclusive children fires on a sixth of its parent's tokens, so seen from the
    # parent's tokens a child covers little of it (cosine ~ 0.4)
    levels, truth = planted_levels(rng, branching=5, depth=2, n_unrelated=0, loud_root=False)
    child, parent = next(iter(truth.items()))
    forward = directed_similarity(sp.csr_matrix(levels[0][:, [parent.latent]]), sp.csr_matrix(levels[1][:, [child.latent]]))
    backward = directed_similarity(sp.csr_matrix(levels[1][:, [child.latent]]), sp.csr_matrix(levels[0][:, [parent.latent]]))
    assert forward[0, 0] > 0.6 > backward[0, 0]


def test_matryoshka_tree_uses_groups_as_levels_and_keeps_latent_indices(seed):
    rng = np.random.default_rng(seed)
    levels, truth = planted_levels(rng, depth=3, n_unrelated=0, loud_root=False)
    codes = sp.csr_matrix(np.concatenate(levels, axis=1))
    ends = list(np.cumsum([level.shape[1] for level in levels]))
    tree = matryoshka_tree(codes, ends)
    offsets = [0, *ends[:-1]]
    expected = {Node(c.level, offsets[c.level] + c.latent): Node(p.level, offsets[p.level] + p.latent) for c, p in truth.items()}
    assert tree.parent == expected
    assert tree.level_names == ["group 1", "group 2", "group 3"]
    with pytest.raises(ValueError, match="prefix ends"):
        matryoshka_tree(codes, [4, 2, ends[-1]])
    with pytest.raises(ValueError, match="prefix ends"):
        matryoshka_tree(codes, ends[:-1])


def test_encode_sparse_equals_dense_encode(seed):
    from msae.saes.registry import build_sae

    torch.manual_seed(seed)
    sae = build_sae("relu", d_in=6, d_sae=10, l0=3)
    x = torch.randn(50, 6)
    codes = encode_sparse(sae, x, chunk=16)
    np.testing.assert_allclose(codes.toarray(), sae.encode(x).detach().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        encode_sparse(sae, torch.randn(5, 7))
    with pytest.raises(ValueError, match="NaN"):
        encode_sparse(sae, torch.full((5, 6), float("nan")))


def test_tree_round_trips_through_json(seed):
    import json

    from msae.evals.latent_trees import LatentTree

    levels, _ = planted_levels(np.random.default_rng(seed), depth=3)
    tree = build_tree([sp.csr_matrix(level) for level in levels], level_names=["a", "b", "c"])
    again = LatentTree.from_dict(json.loads(json.dumps(tree.to_dict())))
    assert again.parent == tree.parent and again.score == tree.score and again.levels == tree.levels
    assert again.level_names == ["a", "b", "c"] and again.threshold == tree.threshold
