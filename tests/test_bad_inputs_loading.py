"""Bad inputs to the public loaders and to the toy experiment, each refused with an exception that
says what is wrong and names the file (or the tree node or field); the toy checks come before any
training, so nothing here trains except the run-keying test's few steps."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import msae
from msae.data.toy import load_tree
from msae.experiments import profiles
from msae.experiments import toy as toy_experiment
from msae.io import SAEFileError
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig

# --- files the tests write -------------------------------------------------------------------


def random_weights(gen, d_in=6, d_sae=10):
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=gen),
        "b_enc": torch.randn(d_sae, generator=gen),
        "W_dec": torch.randn(d_sae, d_in, generator=gen),
        "b_dec": torch.randn(d_in, generator=gen),
    }


def save_ours(folder, gen):
    """A valid Matryoshka SAE in the SAELens layout, with random weights."""
    sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=6, d_sae=10, k=2, group_sizes=[4, 6],
                                                  seed=int(torch.randint(2**31, (), generator=gen))))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        sae.threshold.fill_(float(torch.rand((), generator=gen)))
    msae.save_sae(sae, folder)
    return sae


def edit_cfg(folder, change):
    cfg = json.loads((folder / "cfg.json").read_text())
    change(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def edit_weights(folder, change):
    tensors = load_file(folder / "sae_weights.safetensors")
    change(tensors)
    save_file(tensors, folder / "sae_weights.safetensors")


def save_foreign(folder, gen, architecture="standard", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {**random_weights(gen), **extra}
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"architecture": architecture, "d_in": 6, "d_sae": 10}))


def save_dl(folder, gen, dict_class, state=None, drop=(), trainer=None):
    """A dictionary_learning folder; ``state`` defaults to a valid one for ``dict_class``."""
    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        w = random_weights(gen)
        linear = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T}
        state = {
            "MatryoshkaBatchTopKSAE": {**w, "k": torch.tensor(2), "threshold": torch.tensor(0.3),
                                       "group_sizes": torch.tensor([4, 6])},
            "BatchTopKSAE": {**linear, "b_dec": w["b_dec"], "k": torch.tensor(2), "threshold": torch.tensor(0.3)},
            "AutoEncoder": {**linear, "bias": w["b_dec"]},
            "JumpReluAutoEncoder": {**w, "threshold": torch.rand(10, generator=gen)},
        }[dict_class]
        state = {k: v for k, v in state.items() if k not in drop}
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps(trainer or {"trainer": {"dict_class": dict_class}}))


def poison(tensor, gen, value):
    """``tensor`` with one random entry set to ``value`` (NaN or inf)."""
    tensor = tensor.clone()
    tensor.view(-1)[int(torch.randint(tensor.numel(), (), generator=gen))] = value
    return tensor


def truncate(path):
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


# --- the loaders' table ----------------------------------------------------------------------
# (how to write the bad folder, the loader, the file the message must name, a fragment of it)

SAELENS = [
    pytest.param(lambda f, g: (save_ours(f, g), truncate(f / "cfg.json")),
                 "cfg.json", "is not valid JSON, perhaps truncated", id="truncated-cfg"),
    pytest.param(lambda f, g: (save_ours(f, g), (f / "cfg.json").write_text("[1, 2]")),
                 "cfg.json", "must hold a JSON object, found a list", id="cfg-is-a-list"),
    pytest.param(lambda f, g: (save_ours(f, g), edit_cfg(f, lambda c: c.update(msae="MatryoshkaBatchTopKSAE"))),
                 "cfg.json", "'msae' must be an object", id="msae-not-an-object"),
    pytest.param(lambda f, g: (save_ours(f, g), edit_cfg(f, lambda c: c["msae"].update({"class": "HyperSAE"}))),
                 "cfg.json", r"msae.class 'HyperSAE' is not a class .* \(known: MatryoshkaBatchTopKSAE, L1SAE, ",
                 id="unknown-msae-class"),
    pytest.param(lambda f, g: (save_ours(f, g), edit_cfg(f, lambda c: c["msae"].pop("class"))),
                 "cfg.json", "msae.class None is not a class", id="msae-without-class"),
    pytest.param(lambda f, g: (save_ours(f, g), edit_cfg(f, lambda c: c["msae"].pop("d_sae"))),
                 "cfg.json", "msae config of a MatryoshkaBatchTopKSAE is invalid .*d_sae", id="msae-field-missing"),
    pytest.param(lambda f, g: (save_ours(f, g), edit_weights(f, lambda t: t.pop("threshold"))),
                 "sae_weights.safetensors", "Matryoshka BatchTopK SAE needs a 'threshold'", id="ours-no-threshold"),
    pytest.param(lambda f, g: save_foreign(f, g, "jumprelu"),
                 "sae_weights.safetensors", "a jumprelu SAE needs a 'threshold' of shape \\(10,\\)",
                 id="foreign-jumprelu-no-threshold"),
    pytest.param(lambda f, g: (save_ours(f, g), edit_weights(f, lambda t: t.update(W_dec=poison(t["W_dec"], g, float("nan"))))),
                 "sae_weights.safetensors", "tensor 'W_dec' has 1 NaN or infinite value", id="ours-nan-weight"),
    pytest.param(lambda f, g: save_foreign(f, g, "jumprelu", threshold=poison(torch.rand(10, generator=g), g, float("inf"))),
                 "sae_weights.safetensors", "tensor 'threshold' has 1 NaN or infinite", id="foreign-inf-threshold"),
    pytest.param(lambda f, g: save_foreign(f, g, "standard", W_enc=torch.randn(60, generator=g)),
                 "sae_weights.safetensors", "W_enc has shape \\(60,\\), expected \\(d_in, d_sae\\)", id="foreign-1d-W_enc"),
]

DICTIONARY_LEARNING = [
    pytest.param(lambda f, g: (save_dl(f, g, "AutoEncoder"), truncate(f / "config.json")),
                 "config.json", "is not valid JSON", id="truncated-config"),
    pytest.param(lambda f, g: save_dl(f, g, "AutoEncoder", trainer=["AutoEncoder"]),
                 "config.json", "must hold a JSON object, found a list", id="config-is-a-list"),
    pytest.param(lambda f, g: save_dl(f, g, "AutoEncoder", trainer={"trainer": "AutoEncoder"}),
                 "config.json", "'trainer' must be an object", id="trainer-not-an-object"),
    pytest.param(lambda f, g: save_dl(f, g, "MatryoshkaBatchTopKSAE", drop=["threshold"]),
                 "ae.pt", "needs the tensors .*missing \\['threshold'\\]", id="matryoshka-no-threshold"),
    pytest.param(lambda f, g: save_dl(f, g, "JumpReluAutoEncoder", drop=["threshold"]),
                 "ae.pt", "missing \\['threshold'\\]", id="jumprelu-no-threshold"),
    pytest.param(lambda f, g: save_dl(f, g, "AutoEncoder", state=random_weights(g)),
                 "ae.pt", re.escape("found keys ['W_dec', 'W_enc', 'b_dec', 'b_enc'], missing ['encoder.weight', "
                                    "'encoder.bias', 'decoder.weight', 'bias']"), id="another-class-keys"),
    pytest.param(lambda f, g: save_dl(f, g, "JumpReluAutoEncoder", state=torch.randn(6, 10, generator=g)),
                 "ae.pt", "holds a Tensor, not a state dict; a JumpReluAutoEncoder needs the keys \\['W_enc'",
                 id="bare-tensor"),
    pytest.param(lambda f, g: save_dl(f, g, "BatchTopKSAE", drop=["k"]),
                 "ae.pt", "a BatchTopKSAE needs its k", id="no-k-anywhere"),
    pytest.param(lambda f, g: save_dl(f, g, "MatryoshkaBatchTopKSAE", state={
                     **random_weights(g), "k": torch.tensor(2), "threshold": torch.rand(10, generator=g),
                     "group_sizes": torch.tensor([4, 6])}),
                 "ae.pt", "one global 'threshold', found shape \\(10,\\)", id="per-latent-threshold"),
    pytest.param(lambda f, g: save_dl(f, g, "JumpReluAutoEncoder", state={
                     **random_weights(g), "threshold": torch.rand(7, generator=g)}),
                 "ae.pt", "threshold has shape \\(7,\\), expected \\(10,\\)", id="threshold-wrong-shape"),
    pytest.param(lambda f, g: save_dl(f, g, "AutoEncoder", state={
                     "encoder.weight": poison(torch.randn(10, 6, generator=g), g, float("-inf")),
                     "encoder.bias": torch.randn(10, generator=g), "decoder.weight": torch.randn(6, 10, generator=g),
                     "bias": torch.randn(6, generator=g)}),
                 "ae.pt", "tensor 'encoder.weight' has 1 NaN or infinite", id="inf-weight"),
]


def check_refused(load, folder, file, fragment):
    with pytest.raises(SAEFileError, match=fragment) as error:
        load(folder)
    assert isinstance(error.value, ValueError)  # callers catching ValueError still catch it
    assert str(folder / file) in str(error.value)


@pytest.mark.parametrize("write, file, fragment", SAELENS)
def test_load_sae_refuses(tmp_path, gen, write, file, fragment):
    write(tmp_path, gen)
    check_refused(msae.load_sae, tmp_path, file, fragment)


@pytest.mark.parametrize("write, file, fragment", DICTIONARY_LEARNING)
def test_load_dictionary_learning_refuses(tmp_path, gen, write, file, fragment):
    write(tmp_path, gen)
    check_refused(msae.load_dictionary_learning, tmp_path, file, fragment)


def test_unknown_config_field_is_warned_about_and_ignored(tmp_path, gen):
    sae = save_ours(tmp_path, gen)
    edit_cfg(tmp_path, lambda c: c["msae"].update(future_option=3))
    with pytest.warns(UserWarning, match=r"\['future_option'\] are unknown .* ignored") as warned:
        loaded = msae.load_sae(tmp_path)
    assert str(tmp_path / "cfg.json") in str(warned[0].message)
    x = torch.randn(20, 6, generator=gen)
    assert loaded.config == sae.config and torch.equal(loaded(x), sae(x))


# --- the toy experiment ----------------------------------------------------------------------


def node(p, *children, exclusive=False, read_out=True, name=None):
    out = {"active_prob": p, "children": list(children), "mutually_exclusive_children": exclusive,
           "is_read_out": read_out}
    return {**out, "name": name} if name else out


def two_way_split(gen):
    """Two random probabilities that sum to 1 (up to rounding)."""
    a = float(torch.empty(()).uniform_(0.1, 0.9, generator=gen))
    return a, 1.0 - a


TOY = [
    pytest.param(lambda g: {"tree": node(1.0, node(0.3, node(0.4), node(0.2)), read_out=False)},
                 r"n_prefixes=10 but the SAEs have 3 latents \(1 per feature of the tree.s 3\)", id="fewer-features-than-prefixes"),
    pytest.param(lambda g: {"tree": node(1.0, node(0.3, *(node(p) for p in two_way_split(g)), exclusive=True,
                                                    name="animal"), *(node(0.1) for _ in range(8)), read_out=False)},
                 r"parent feature 'animal' at root.children\[0\] never fires without a child feature.*"
                 r"exclusive children's active_prob sum to 1\b", id="exclusive-children-sum-to-1"),
    pytest.param(lambda g: {"tree": node(1.0, node(0.3, node(0.7), node(0.6), exclusive=True), read_out=False)},
                 r"exclusive children of root.children\[0\] have probabilities summing to 1.3", id="exclusive-sum-over-1"),
    pytest.param(lambda g: {"tree": node(1.0, node(0.2, node(0.1, node(1.0), read_out=False), node(1.0)),
                                         node(0.4, node(0.5)), read_out=False), "n_prefixes": 2},
                 r"feature 'feature 0' at root.children\[0\] never fires without.*no chance to fire alone",
                 id="child-that-always-fires"),
    pytest.param(lambda g: {"tree": node(1.0, *(node(0.2) for _ in range(12)), read_out=False)},
                 "the tree has no parent feature", id="no-hierarchy"),
    # a second level of parents so rare that one fires alone ~4 times in the 4,000 evaluation samples
    pytest.param(lambda g: {"tree": node(1.0, node(0.1, node(0.02, node(0.5), name="rare"), node(0.2)),
                                         *(node(0.1) for _ in range(10)), read_out=False)},
                 r"parent feature 'rare' fires without a child feature with probability 0.001: about 4.0 times in "
                 r"eval_samples=4000, too few.*want >= 5", id="rare-parent"),
    pytest.param(lambda g: {"tree": node(1.0, node(0.5, node(0.0)), *(node(0.1) for _ in range(10)), read_out=False)},
                 "no parent feature of the tree ever fires together with a child", id="children-never-fire"),
    pytest.param(lambda g: {"n_prefixes": 0}, r"n_prefixes must be (an integer )?in 1\.\.d_sae=20, got 0", id="no-prefixes"),
    pytest.param(lambda g: {"target_l0": 25.0}, "target_l0 must be in", id="target-l0-over-d_sae"),
    pytest.param(lambda g: {"d_model": 12}, "d_model=12 cannot hold 20 orthogonal features", id="d_model-too-small"),
]


@pytest.mark.parametrize("as_file", [False, True])
@pytest.mark.parametrize("overrides, fragment", TOY)
def test_toy_run_refuses_before_training(tmp_path, gen, overrides, fragment, as_file):
    overrides = overrides(gen)
    if as_file and "tree" in overrides:
        (tmp_path / "tree.json").write_text(json.dumps(overrides["tree"]))
        overrides["tree"] = str(tmp_path / "tree.json")
    # steps=20: were a check missing, the run would train for a moment, then fail or not
    config = profiles.toy_config("smoke", steps=20, **overrides)
    with pytest.raises(ValueError, match=fragment):
        toy_experiment.run(config, [0, 1], tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()  # refused before anything trained


def test_toy_run_refuses_empty_seeds(tmp_path):
    with pytest.raises(ValueError, match="seeds is empty"):
        toy_experiment.run(profiles.toy_config("smoke", steps=20), [], tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_toy_checks_accept_a_tree_with_an_explicit_no_child_node(gen):
    """Exclusive children summing to 1 are fine when one of them is a "no child" node that is not
    read out: the parent then fires alone with that node's probability."""
    a, b = two_way_split(gen)
    tree = node(1.0, node(0.5, node(a / 2), node(a / 2), node(b, read_out=False), exclusive=True),
                node(0.1, node(0.5)), read_out=False)
    toy_experiment.check_config(profiles.toy_config("smoke", tree=tree, n_prefixes=5))


# --- the toy run's key -----------------------------------------------------------------------


def test_paper_tree_keeps_its_run_key_however_it_is_given(tmp_path):
    # the names the default runs had when the key hashed the tree spec: existing runs are found
    assert profiles.toy_config("default").run_name() == "585367664c"
    assert profiles.toy_config("smoke").run_name() == "550919b43a"
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(load_tree("paper").to_dict()))
    assert profiles.toy_config("default", tree=str(path)).run_name() == "585367664c"


def test_editing_a_tree_file_in_place_starts_a_new_run(tmp_path, gen):
    path = tmp_path / "tree.json"
    p = round(float(torch.empty(()).uniform_(0.2, 0.8, generator=gen)), 3)
    tree = node(1.0, node(0.3, node(p), node(0.1)), node(0.2), read_out=False)
    path.write_text(json.dumps(tree))
    config = profiles.toy_config("smoke", tree=str(path), steps=3, warmup_steps=1, n_prefixes=2, eval_samples=200)
    assert config.run_name() == profiles.toy_config("smoke", tree=tree, steps=3, warmup_steps=1,
                                                    n_prefixes=2, eval_samples=200).run_name()  # content, not path
    first = config.run_name()
    toy_experiment.train_toy_saes(config, tmp_path / "runs", progress=False)
    tree["children"][0]["children"][0]["active_prob"] = round(p / 2, 3)
    path.write_text(json.dumps(tree))
    assert config.run_name() != first
    # before, the edited tree resumed the old run's folder and its checkpoint refused the new data
    toy_experiment.train_toy_saes(config, tmp_path / "runs", progress=False)
    assert sorted(d.name for d in (tmp_path / "runs" / "toy").iterdir()) == sorted([first, config.run_name()])
