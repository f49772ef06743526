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
