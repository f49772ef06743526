"""Toy data with hierarchical features (paper §3.1, SPEC §5).

A tree of binary features: a node can fire only when its parent fires; the children of a node
marked ``mutually_exclusive_children`` fire at most one at a time. Each read-out node is a
feature with a direction in ``R^d``; an input is the sum of the directions of the active
features. Trees are plain data, in the JSON layout of the original toy model::

    {"active_prob": 1.0, "is_read_out": false, "children": [
        {"active_prob": 0.15, "mutually_exclusive_children": true, "children": [
            {"active_prob": 0.2}, {"active_prob": 0.2}, {"active_prob": 0.2}]},
        {"active_prob": 0.05}]}

For exclusive children, ``active_prob`` is the chance of picking that child given the parent;
the probabilities may sum to less than one (the rest is "no child"), and a non-read-out child
can stand for that rest explicitly, as in the original file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_NODE_KEYS = {"active_prob", "children", "mutually_exclusive_children", "is_read_out", "name", "id"}


@dataclass
class FeatureNode:
    """One node of a feature tree (the module docstring's JSON layout, :meth:`from_dict`).

    Attributes:
        active_prob: the chance the node fires when its parent does, in [0, 1]; for a child of
            ``mutually_exclusive_children``, the chance this child is the one picked.
        children: the nodes that can fire only when this one does.
        mutually_exclusive_children: at most one child fires at a time.
        is_read_out: the node is a feature with a direction of its own; False: structure only.
        name: the feature's name (:attr:`FeatureTree.feature_names`); None: "feature <index>".
    """

    active_prob: float
    children: list[FeatureNode] = field(default_factory=list)
    mutually_exclusive_children: bool = False
    is_read_out: bool = True
    name: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "root") -> FeatureNode:
        if not isinstance(data, dict):
            raise ValueError(f"tree node at {path} must be an object, got {type(data).__name__}")
        unknown = set(data) - _NODE_KEYS
        if unknown:
            raise ValueError(f"tree node at {path} has unknown keys {sorted(unknown)}; allowed: {sorted(_NODE_KEYS)}")
        if "active_prob" not in data:
            raise ValueError(f"tree node at {path} has no 'active_prob'")
        children = [cls.from_dict(c, f"{path}.children[{i}]") for i, c in enumerate(data.get("children", []))]
        name = data.get("name", data.get("id"))
        return cls(
            active_prob=float(data["active_prob"]),
            children=children,
            mutually_exclusive_children=bool(data.get("mutually_exclusive_children", False)),
            is_read_out=bool(data.get("is_read_out", True)),
            name=None if name is None else str(name),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"active_prob": self.active_prob}
        if not self.is_read_out:
            out["is_read_out"] = False
        if self.mutually_exclusive_children:
            out["mutually_exclusive_children"] = True
        if self.name is not None:
            out["name"] = self.name
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out


def paper_tree() -> FeatureNode:
    """The paper's tree: 3 parents (p=0.15) with 3 exclusive children each (p=0.2 given the
    parent), and 8 independent features (p=0.05). 20 features; expected L0 = 1.12."""
    parents = [
        FeatureNode(
            0.15,
            [FeatureNode(0.2, name=f"child {p}.{c}") for c in range(3)],
            mutually_exclusive_children=True,
            name=f"parent {p}",
        )
        for p in range(3)
    ]
    singles = [FeatureNode(0.05, name=f"single {i}") for i in range(8)]
    return FeatureNode(1.0, parents + singles, is_read_out=False, name="root")


def hierarchy_tree(depth: int, n_roots: int = 3, branching: int = 2, root_prob: float = 0.25, child_prob: float = 0.35,
                   n_singles: int = 6, single_prob: float = 0.05) -> FeatureNode:
    """A tree with ``depth`` levels of features: ``n_roots`` top-level features firing with
    ``root_prob``; every feature above the last level has ``branching`` mutually exclusive
    children, each the one picked with ``child_prob`` (the rest of the time none is); plus
    ``n_singles`` independent features. Names say where a feature sits ("f1.0.1": root 1, its
    child 0, that child's child 1). ``hierarchy_tree(2, 3, 3, 0.15, 0.2, 8)`` has the paper tree's shape and probabilities."""
    if depth < 1 or n_roots < 1 or branching < 1:
        raise ValueError(f"depth, n_roots and branching must be >= 1, got {depth}, {n_roots}, {branching}")
    if branching * child_prob > 1 + 1e-9:
        raise ValueError(f"{branching} exclusive children of probability {child_prob} sum to more than 1")

    def node(name: str, prob: float, level: int) -> FeatureNode:
        if level == depth - 1:
            return FeatureNode(prob, name=name)
        children = [node(f"{name}.{c}", child_prob, level + 1) for c in range(branching)]
        return FeatureNode(prob, children, mutually_exclusive_children=True, name=name)

    roots = [node(f"f{r}", root_prob, 0) for r in range(n_roots)]
    singles = [FeatureNode(single_prob, name=f"single {i}") for i in range(n_singles)]
    return FeatureNode(1.0, roots + singles, is_read_out=False, name="root")


NAMED_TREES = {
    "paper": paper_tree,
    # the depth study (notebook 19): the same design at two, three and four levels
    "depth2": lambda: hierarchy_tree(2),
    "depth3": lambda: hierarchy_tree(3),
    "depth4": lambda: hierarchy_tree(4),
    # the paper tree's branching and probabilities (3 children of 0.2 each, roots 0.15, 8
    # singles) one and two levels deeper: does depth fail, or the depth trees' 2 children of 0.35?
    "paper3": lambda: hierarchy_tree(3, n_roots=3, branching=3, root_prob=0.15, child_prob=0.2, n_singles=8),
    "paper4": lambda: hierarchy_tree(4, n_roots=3, branching=3, root_prob=0.15, child_prob=0.2, n_singles=8),
    # the depth trees with rarer children (0.2 each, so 0.6 of the time none), all else the same
    "depth2-rare": lambda: hierarchy_tree(2, child_prob=0.2),
    "depth3-rare": lambda: hierarchy_tree(3, child_prob=0.2),
}


def load_tree(spec: str | Path | dict | FeatureNode) -> FeatureNode:
    """A tree from a name in ``NAMED_TREES``, a JSON file path, a dict or a FeatureNode."""
    if isinstance(spec, FeatureNode):
        return spec
    if isinstance(spec, dict):
        return FeatureNode.from_dict(spec)
    if isinstance(spec, str) and spec in NAMED_TREES:
        return NAMED_TREES[spec]()
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return FeatureNode.from_dict(json.loads(path.read_text()))
    raise ValueError(f"unknown tree {str(spec)!r}: use one of {sorted(NAMED_TREES)} or the path of a JSON tree file")


class FeatureTree:
    """A tree flattened into arrays (pre-order, parents before children) for vectorised sampling.

    Attributes:
        n_features: number of read-out nodes.
        feature_names: (n_features,) a name per feature.
        parent_feature: (n_features,) index of the nearest read-out ancestor, or -1.
        feature_depth: (n_features,) how many read-out ancestors each feature has: 0 for a
            top-level feature (a parent or an independent one), 1 for its children, 2 for
            grandchildren, ...
    """

    def __init__(self, root: FeatureNode):
        self.root = root
        self.node_prob: list[float] = []
        self.node_parent: list[int] = []  # node index, -1 for the root
        self.node_group: list[int] = []  # exclusive-choice group of the node, -1 if independent
        self.node_feature: list[int] = []  # feature index of read-out nodes, -1 otherwise
        self.group_parent: list[int] = []  # node whose children form each exclusive group
        self.group_members: list[list[int]] = []
        self.feature_names: list[str] = []
        self.parent_feature: list[int] = []
        self.feature_depth: list[int] = []
        self.node_path: list[str] = []  # where each node sits in the JSON ("root.children[0]"), for messages
        self._add(root, parent=-1, group=-1, feature_ancestor=-1, path="root")
        self.n_features = len(self.feature_names)
        if self.n_features == 0:
            raise ValueError("the tree has no read-out features")

    def _add(self, node: FeatureNode, parent: int, group: int, feature_ancestor: int, path: str) -> None:
        if not 0.0 <= node.active_prob <= 1.0:
            raise ValueError(f"active_prob at {path} must be in [0, 1], got {node.active_prob}")
        index = len(self.node_prob)
        self.node_path.append(path)
        self.node_prob.append(node.active_prob)
        self.node_parent.append(parent)
        self.node_group.append(group)
        if node.is_read_out:
            self.node_feature.append(len(self.feature_names))
            self.feature_names.append(node.name or f"feature {len(self.feature_names)}")
            self.parent_feature.append(feature_ancestor)
            self.feature_depth.append(0 if feature_ancestor < 0 else self.feature_depth[feature_ancestor] + 1)
            feature_ancestor = self.node_feature[index]
        else:
            self.node_feature.append(-1)
        child_group = -1
        if node.mutually_exclusive_children:
            if not node.children:
                raise ValueError(f"node at {path} has mutually_exclusive_children but no children")
            total = sum(c.active_prob for c in node.children)
            if total > 1 + 1e-9:
                raise ValueError(f"exclusive children of {path} have probabilities summing to {total:.4f} > 1")
            child_group = len(self.group_parent)
            self.group_parent.append(index)
            self.group_members.append([])
        for i, child in enumerate(node.children):
            if child_group >= 0:
                self.group_members[child_group].append(len(self.node_prob))
            self._add(child, index, child_group, feature_ancestor, f"{path}.children[{i}]")

    @property
    def depth(self) -> int:
        """Levels of features: 1 for independent features only, 2 for parents with children, ..."""
        return max(self.feature_depth) + 1

    def descendants(self, feature: int) -> list[int]:
        """Every feature below ``feature`` (children, grandchildren, ...), in pre-order."""
        below, frontier = [], [feature]
        while frontier:
            kids = [f for f in range(self.n_features) if self.parent_feature[f] in frontier]
            below += kids
            frontier = kids
        return sorted(below)

    @property
    def n_nodes(self) -> int:
        return len(self.node_prob)

    def node_marginals(self) -> torch.Tensor:
        """(n_nodes,) P(node active), exactly, from the tree."""
        marginal = torch.zeros(self.n_nodes, dtype=torch.float64)
        for n in range(self.n_nodes):
            parent = self.node_parent[n]
            marginal[n] = self.node_prob[n] * (1.0 if parent < 0 else marginal[parent])
        return marginal

    def feature_probabilities(self) -> torch.Tensor:
        """(n_features,) P(feature active), exactly."""
        marginal = self.node_marginals()
        readout = [n for n in range(self.n_nodes) if self.node_feature[n] >= 0]
        return marginal[readout]

    def parent_alone_probabilities(self) -> dict[int, tuple[float, float]]:
        """For each feature that has child features (:attr:`parent_feature`): ``{feature: (P(it
        fires with none of its child features), P(it fires with at least one))}``, exactly.

        Bottom-up over the nodes, ``quiet[n]`` = P(no read-out node below n, up to the first
        read-out one on each branch, fires | n fires); a child c breaks the quiet with chance
        p_c if it is read out, p_c * (1 - quiet[c]) if not. Independent children multiply the
        chances of staying quiet; exclusive ones are disjoint events, so their chances add.
        """
        children: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for n, parent in enumerate(self.node_parent):
            if parent >= 0:
                children[parent].append(n)
        exclusive = set(self.group_parent)
        quiet = [1.0] * self.n_nodes
        for n in reversed(range(self.n_nodes)):  # pre-order: children come after their parent
            breaks = [self.node_prob[c] * (1.0 if self.node_feature[c] >= 0 else 1.0 - quiet[c]) for c in children[n]]
            if n in exclusive:
                quiet[n] = max(0.0, 1.0 - sum(breaks))
            else:
                quiet[n] = math.prod(1.0 - b for b in breaks)
        marginal = self.node_marginals().tolist()
        node_of_feature = {f: n for n, f in enumerate(self.node_feature) if f >= 0}
        out = {}
        for feature in sorted(set(self.parent_feature) - {-1}):
            n = node_of_feature[feature]
            out[feature] = (marginal[n] * quiet[n], marginal[n] * (1.0 - quiet[n]))
        return out

    def expected_l0(self) -> float:
        """Mean number of active features per sample."""
        return float(self.feature_probabilities().sum())

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch_size, n_features) 0/1 activations. Vectorised over the batch: the only loop
        is over the tree's nodes."""
        uniform = torch.rand(batch_size, self.n_nodes, generator=generator)
        group_choice = []
        for members in self.group_members:  # one categorical draw per exclusive group
            probs = torch.tensor([self.node_prob[m] for m in members] + [0.0])
            probs[-1] = max(0.0, 1.0 - float(probs[:-1].sum()))  # "no child"
            group_choice.append(torch.multinomial(probs, batch_size, replacement=True, generator=generator))
        active = torch.zeros(batch_size, self.n_nodes, dtype=torch.bool)
        for n in range(self.n_nodes):
            group = self.node_group[n]
            if group >= 0:
                fires = group_choice[group] == self.group_members[group].index(n)
            else:
                fires = uniform[:, n] < self.node_prob[n]
            parent = self.node_parent[n]
            active[:, n] = fires if parent < 0 else fires & active[:, parent]
        readout = [n for n in range(self.n_nodes) if self.node_feature[n] >= 0]
        return active[:, readout].float()


class ToyData:
    """Hierarchical toy inputs: feature directions plus a seeded stream of batches.

    Directions are orthonormal (QR of a Gaussian matrix), each scaled by ``1 + scale_std *
    N(0, 1)``. The stream is resumable: ``state_dict`` holds its generator's state.
    """

    def __init__(
        self,
        tree: FeatureTree,
        d_model: int | None = None,
        batch_size: int = 200,
        seed: int = 0,
        scale_std: float = 0.05,
    ):
        self.tree = tree
        self.d_model = d_model or tree.n_features
        if self.d_model < tree.n_features:
            raise ValueError(f"d_model={self.d_model} cannot hold {tree.n_features} orthogonal features")
        self.batch_size = batch_size
        self.seed = seed
        setup = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(self.d_model, self.d_model, generator=setup))
        scales = 1.0 + scale_std * torch.randn(tree.n_features, 1, generator=setup)
        self.directions = q[: tree.n_features] * scales  # (n_features, d_model)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples: (true activations (n, n_features), inputs (n, d_model))."""
        true_acts = self.tree.sample(n, generator)
        return true_acts, true_acts @ self.directions

    def next_batch(self) -> torch.Tensor:
        return self.sample(self.batch_size, self.generator)[1]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "toy",
            "tree": self.tree.root.to_dict(),
            "d_model": self.d_model,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }
