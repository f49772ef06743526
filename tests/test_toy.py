import json

import pytest
import torch

from msae.data.toy import FeatureNode, FeatureTree, ToyData, load_tree, paper_tree


def test_paper_tree_structure_and_expected_l0():
    tree = FeatureTree(paper_tree())
    assert tree.n_features == 20
    # 3 parents at 0.15, 9 children at 0.15 * 0.2, 8 singles at 0.05
    assert tree.expected_l0() == pytest.approx(3 * 0.15 + 9 * 0.15 * 0.2 + 8 * 0.05)
    assert tree.expected_l0() == pytest.approx(1.12)
    assert tree.parent_feature[:4] == [-1, 0, 0, 0] and tree.parent_feature[-1] == -1


def test_sampling_matches_the_tree(gen):
    tree = FeatureTree(paper_tree())
    acts = tree.sample(200_000, gen)
    assert set(acts.unique().tolist()) == {0.0, 1.0}
    freq = acts.mean(0)
    probs = tree.feature_probabilities().float()
    # binomial standard error; 5 of them
    assert torch.all((freq - probs).abs() < 5 * (probs * (1 - probs) / 200_000).sqrt())
    assert acts.sum(1).mean() == pytest.approx(1.12, abs=5 * (1.2 / 200_000) ** 0.5)
    for parent in (0, 4, 8):
        children = acts[:, parent + 1 : parent + 4]
        assert torch.all(children.sum(1) <= 1)  # mutually exclusive
        assert torch.all(acts[children.sum(1) > 0, parent] == 1)  # only with their parent
        given_parent = children[acts[:, parent] == 1].mean(0)
        assert torch.allclose(given_parent, torch.full((3,), 0.2), atol=0.02)


def test_original_json_layout_with_an_explicit_no_child_node(tmp_path, gen):
    node = {
        "active_prob": 1.0,
        "is_read_out": False,
        "children": [
            {
                "active_prob": 0.5,
                "mutually_exclusive_children": True,
                "children": [{"active_prob": 0.3}, {"active_prob": 0.3}, {"active_prob": 0.4, "is_read_out": False}],
            },
            {"active_prob": 0.1, "children": [{"active_prob": 0.5}]},
        ],
    }
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(node))
    tree = FeatureTree(load_tree(str(path)))
    assert tree.n_features == 5
    assert tree.feature_probabilities().tolist() == pytest.approx([0.5, 0.15, 0.15, 0.1, 0.05])
    # a round trip through to_dict keeps the tree
    again = FeatureTree(FeatureNode.from_dict(tree.root.to_dict()))
    assert again.feature_probabilities().tolist() == pytest.approx(tree.feature_probabilities().tolist())


@pytest.mark.parametrize(
    "node, message",
    [
        ({"active_prob": 1.2}, r"must be in \[0, 1\]"),
        ({"active_prob": 0.5, "childs": []}, "unknown keys"),
        ({"children": []}, "no 'active_prob'"),
        ({"active_prob": 1, "mutually_exclusive_children": True, "children": [{"active_prob": 0.7}, {"active_prob": 0.6}]}, "summing to 1.3"),
        ({"active_prob": 1, "is_read_out": False}, "no read-out features"),
    ],
)
def test_bad_trees_say_what_is_wrong(node, message):
    with pytest.raises(ValueError, match=message):
        FeatureTree(load_tree(node))


def test_unknown_tree_name():
    with pytest.raises(ValueError, match="unknown tree 'papr'"):
        load_tree("papr")


def test_directions_are_orthogonal_and_near_unit(seed):
    data = ToyData(FeatureTree(paper_tree()), seed=seed)
    d = data.directions
    gram = d @ d.T
    off_diagonal = gram - torch.diag(gram.diag())
    assert off_diagonal.abs().max() < 1e-5
    assert torch.all((d.norm(dim=1) - 1).abs() < 0.25)  # 1 + 0.05 N(0,1): 5 sigma
    assert d.norm(dim=1).std() > 0.005  # but really scaled


def test_stream_is_seeded_and_resumable(seed):
    a = ToyData(FeatureTree(paper_tree()), seed=seed)
    b = ToyData(FeatureTree(paper_tree()), seed=seed)
    a.next_batch()
    state = a.state_dict()
    first = a.next_batch()
    b.load_state_dict(state)
    assert torch.equal(b.next_batch(), first)
    assert torch.equal(a.sample(5, torch.Generator().manual_seed(1))[1], b.sample(5, torch.Generator().manual_seed(1))[1])


def test_hierarchy_tree_levels_depths_and_probabilities():
    from msae.data.toy import hierarchy_tree

    tree = FeatureTree(hierarchy_tree(3, n_roots=2, branching=2, root_prob=0.3, child_prob=0.4, n_singles=1))
    assert tree.n_features == 2 + 4 + 8 + 1 and tree.depth == 3
    assert tree.feature_depth == [0, 1, 2, 2, 1, 2, 2] * 2 + [0]
    assert tree.descendants(0) == [1, 2, 3, 4, 5, 6] and tree.descendants(1) == [2, 3] and tree.descendants(14) == []
    expected = {0: 0.3, 1: 0.3 * 0.4, 2: 0.3 * 0.4 * 0.4}
    probs = tree.feature_probabilities()
    for feature, depth in enumerate(tree.feature_depth[:-1]):
        assert float(probs[feature]) == pytest.approx(expected[depth])
    assert tree.feature_names[:3] == ["f0", "f0.0", "f0.0.0"]
    with pytest.raises(ValueError, match="sum to more than 1"):
        hierarchy_tree(2, branching=3, child_prob=0.4)
    with pytest.raises(ValueError, match=">= 1"):
        hierarchy_tree(0)


def test_rare_trees_differ_from_the_depth_trees_only_in_child_probability():
    from msae.data.toy import load_tree

    for depth in (2, 3):
        common, rare = FeatureTree(load_tree(f"depth{depth}")), FeatureTree(load_tree(f"depth{depth}-rare"))
        assert rare.feature_names == common.feature_names and rare.feature_depth == common.feature_depth
        for f in range(common.n_features):
            parent = common.parent_feature[f]
            if parent < 0:
                assert rare.feature_probabilities()[f] == pytest.approx(float(common.feature_probabilities()[f]))
            else:
                assert float(rare.feature_probabilities()[f] / rare.feature_probabilities()[parent]) == pytest.approx(0.2)
                assert float(common.feature_probabilities()[f] / common.feature_probabilities()[parent]) == pytest.approx(0.35)


@pytest.mark.parametrize("name, depth", [("paper3", 3), ("paper4", 4)])
def test_paper3_and_paper4_are_the_paper_tree_deeper(name, depth):
    from msae.data.toy import load_tree, paper_tree

    paper, deeper = FeatureTree(paper_tree()), FeatureTree(load_tree(name))
    assert deeper.depth == depth and paper.depth == 2
    tops = [f for f in range(deeper.n_features) if deeper.feature_depth[f] <= 1]
    # its first two levels and the independent features fire as the paper tree's do
    assert sorted(deeper.feature_probabilities()[tops].tolist()) == pytest.approx(
        sorted(paper.feature_probabilities().tolist()))
    for parent in (f for f in range(deeper.n_features) if deeper.descendants(f)):
        children = [c for c in range(deeper.n_features) if deeper.parent_feature[c] == parent]
        assert len(children) == 3
        ratio = deeper.feature_probabilities()[children] / deeper.feature_probabilities()[parent]
        assert ratio.tolist() == pytest.approx([0.2] * 3)


class _LinearSAE:
    """Reads each feature with its dual direction: an SAE whose latents are the true features,
    except where the encoder is told to subtract other features (absorption planted by hand)."""

    def __init__(self, W_enc, W_dec):
        self.W_enc, self.W_dec = W_enc, W_dec

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, codes):
        return codes @ self.W_dec


def test_per_level_absorption_and_cosine_on_planted_saes(seed):
    from msae.data.toy import hierarchy_tree
    from msae.experiments.toy import evaluate, summary

    tree = FeatureTree(hierarchy_tree(3, n_roots=2, branching=2, root_prob=0.3, child_prob=0.4, n_singles=2))
    data = ToyData(tree, seed=seed)
    dual = torch.linalg.pinv(data.directions)  # (d_model, n_features): x @ dual = true activations
    perfect = summary(evaluate(_LinearSAE(dual, data.directions), data, 6000))
    assert perfect["cosine_L0"] == perfect["cosine_L1"] == perfect["cosine_L2"] == 1.0
    assert perfect["absorption_L0"] == perfect["absorption_L1"] == perfect["parent_absorption_rate"] == 0.0

    # top-level parents go silent whenever a child fires: level 0 absorbed, level 1 intact
    W_enc = dual.clone()
    for parent in (f for f in range(tree.n_features) if tree.feature_depth[f] == 0 and tree.descendants(f)):
        children = [c for c in range(tree.n_features) if tree.parent_feature[c] == parent]
        W_enc[:, parent] -= 2 * dual[:, children].sum(1)
    evaluation = evaluate(_LinearSAE(W_enc, data.directions), data, 6000)
    absorbing = summary(evaluation)
    assert absorbing["absorption_L0"] == 1.0 and absorbing["absorption_L1"] == 0.0
    # the pooled rate weighs each level by its (parent, child) samples
    true = evaluation.true_acts
    together = {d: sum(int(((true[:, p] > 0) & (true[:, [c for c in range(tree.n_features) if tree.parent_feature[c] == p]] > 0).any(1)).sum())
                       for p in set(tree.parent_feature) - {-1} if tree.feature_depth[p] == d) for d in (0, 1)}
    assert evaluation.parent_absorption == pytest.approx(together[0] / (together[0] + together[1]))
