import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from msae.evals import probes, probing
from msae.evals.probes import LinearProbe
from msae.evals.probing import PooledSplit


def orthonormal_rows(n, d, gen):
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=torch.float64))
    return q.T.contiguous()  # (n, d)


def binary_labels(n, gen):
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=gen)[: n // 2]] = 1
    return y


# --- the probes ---------------------------------------------------------------------------


def test_probe_rejects_bad_input(gen):
    x = torch.randn(20, 3, generator=gen)
    y = binary_labels(20, gen)
    with pytest.raises(ValueError, match="both classes"):
        probing.train_probe(x, torch.ones(20, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        probing.train_probe(torch.where(x > 1, float("nan"), x), y)
    with pytest.raises(ValueError, match="shape"):
        probing.train_probe(x, y[:10])
    with pytest.raises(ValueError, match="0 or 1"):
        probing.train_probe(x, y * 2)


# --- sparse probing -----------------------------------------------------------------------


def test_top_k_by_mean_difference_is_a_sort(gen):
    x = torch.randn(50, 30, generator=gen)
    y = binary_labels(50, gen)
    diffs = [abs(float(x[y == 1, j].mean() - x[y == 0, j].mean())) for j in range(30)]
    expected = sorted(range(30), key=lambda j: -diffs[j])[:5]
    assert probing.top_k_by_mean_difference(x, y, 5).tolist() == expected


def sparse_latents(n, d_sae, gen, carrier=None, y=None):
    """Non-negative noise latents; ``carrier`` fires (about 3) exactly on positives."""
    latents = torch.relu(torch.randn(n, d_sae, generator=gen))
    if carrier is not None:
        latents[:, carrier] = y * (3 + 0.3 * torch.rand(n, generator=gen))
    return latents


def test_sparse_probing_finds_the_latent_that_carries_the_label(gen, seed):
    n, d_sae = 800, 64
    carrier = int(torch.randint(d_sae, (), generator=gen))
    y_train, y_test = binary_labels(n, gen), binary_labels(n, gen)
    train = sparse_latents(n, d_sae, gen, carrier, y_train)
    test = sparse_latents(n, d_sae, gen, carrier, y_test)
    resid = lambda lat: lat @ torch.randn(d_sae, 16, generator=gen)  # noqa: E731
    resid_train, resid_test = resid(train), resid(test)
    result = probing.sparse_probing(train, y_train, test, y_test, ks=(1, 2, 5), resid_train=resid_train,
                                    resid_test=resid_test, seed=seed)
    assert result["sae_top_k_latents"]["1"] == [carrier]
    assert result["sae_top_k_accuracy"]["1"] > 0.99 and result["sae_top_k_accuracy"]["5"] > 0.99
    assert set(result["sae_top_k_latents"]) == {"1", "2", "5"}
    # SAEBench reports the model-activation probe's best test accuracy over its epochs
    fit = probes.fit_adamw_probe(resid_train, y_train, probes.LLM_PROBE, seed, select_on=(resid_test, y_test))
    assert result["llm_accuracy"] == max(fit.selection_accuracy)
    json.dumps(result)


def test_sparse_probes_are_sklearn_on_the_raw_top_k_latents(gen):
    """Each k-sparse probe is sklearn's LogisticRegression(C=1, max_iter=1000) on the chosen
    latents, unstandardised: its test accuracy is sklearn's, on latents of very different scales."""
    n, d_sae = 600, 12
    y_train, y_test = binary_labels(n, gen), binary_labels(n, gen)
    scale = 10 ** (3 * torch.rand(d_sae, generator=gen) - 1)  # 0.1 .. 100
    signal = torch.randn(d_sae, generator=gen)

    def latents(y):
        return torch.relu(torch.randn(n, d_sae, generator=gen) + 0.7 * y[:, None] * signal + 1) * scale

    train, test = latents(y_train), latents(y_test)
    result = probing.sparse_probing(train, y_train, test, y_test, ks=(2, 5))
    for k in ("2", "5"):
        columns = sorted(result["sae_top_k_latents"][k])
        assert columns == sorted(probing.top_k_by_mean_difference(train, y_train, int(k)).tolist())
        reference = LogisticRegression(C=1.0, max_iter=1000).fit(train[:, columns].numpy(), y_train.numpy())
        expected = float((reference.predict(test[:, columns].numpy()) == y_test.numpy()).mean())
        assert abs(result["sae_top_k_accuracy"][k] - expected) <= 2 / n  # a borderline logit may round apart


def test_sparse_probing_is_at_chance_without_a_carrier(gen):
    n, d_sae = 1000, 64
    y_train, y_test = binary_labels(n, gen), binary_labels(n, gen)
    result = probing.sparse_probing(sparse_latents(n, d_sae, gen), y_train, sparse_latents(n, d_sae, gen), y_test)
    for k in ("1", "2", "5"):
        assert abs(result["sae_top_k_accuracy"][k] - 0.5) < 0.08


# --- ablation -----------------------------------------------------------------------------


def test_pooled_ablation_equals_per_token_ablation_then_pooling(gen):
    """SAEBench ablates per token (decode with the latents zeroed, plus the SAE's error) and
    then mean-pools; ablating pooled latents of pooled activations gives the same (float64)."""
    n, ctx, d, d_sae = 6, 9, 12, 20
    x = torch.randn(n, ctx, d, generator=gen, dtype=torch.float64)
    mask = torch.rand(n, ctx, generator=gen) < 0.7
    mask[:, 0] = True
    W_enc = torch.randn(d, d_sae, generator=gen, dtype=torch.float64)
    W_dec = torch.randn(d_sae, d, generator=gen, dtype=torch.float64)
    b_enc = torch.randn(d_sae, generator=gen, dtype=torch.float64)
    b_dec = torch.randn(d, generator=gen, dtype=torch.float64)
    f = torch.relu((x - b_dec) @ W_enc + b_enc)  # (n, ctx, d_sae)
    chosen = torch.randperm(d_sae, generator=gen)[:5]
    f_ablated = f.clone()
    f_ablated[..., chosen] = 0
    error = x - (f @ W_dec + b_dec)
    x_ablated = f_ablated @ W_dec + b_dec + error

    def mean_pool(t):
        return (t * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    pooled = probing.ablate(mean_pool(x), mean_pool(f), W_dec, chosen)
    torch.testing.assert_close(pooled, mean_pool(x_ablated), rtol=1e-12, atol=1e-12)


def test_top_n_latents_skips_zero_effects():
    effects = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0])
    assert probing.top_n_latents(effects, 2).tolist() == [1, 4]
    assert sorted(probing.top_n_latents(effects, 10).tolist()) == [1, 3, 4]


# --- SCR ----------------------------------------------------------------------------------


def scr_world(gen, n, spurious_latents=True, spurious_signal=20.0, target_noise=0.6, resid_noise=0.3, target_signal=1.0):
    """A hand-built SAE on d_model=16: latents 0/1 fire for male/female (decoder rows g and -g,
    strength uniform in [0, spurious_signal]), latents 2/3 for target A/B (rows e and -e,
    strength ``target_signal`` times 1 to 1 + target_noise), latents 4..9 are noise; the
    residual stream is the decoded latents plus Gaussian noise. With ``spurious_latents=False``
    the gender signal lies along a direction outside the dictionary and latents 0/1 are noise.
    Returns the five splits :func:`probing.scr` takes, ``W_dec`` and a biased test set."""
    d_model, d_sae = 16, 10
    rows = orthonormal_rows(d_sae + 1, d_model, gen).float()
    W_dec = rows[:d_sae].clone()
    W_dec[1], W_dec[3] = -W_dec[0], -W_dec[2]
    outside = rows[d_sae]

    def make(target, spurious):
        m = len(target)
        latents = torch.relu(torch.randn(m, d_sae, generator=gen)) * 0.2
        latents[:, 2] = target * target_signal * (1 + target_noise * torch.rand(m, generator=gen))
        latents[:, 3] = (1 - target) * target_signal * (1 + target_noise * torch.rand(m, generator=gen))
        # gender strength varies from text to text, so the biased probe needs the target too
        strength = spurious_signal * torch.rand(m, generator=gen)
        gender = (strength * (2 * spurious - 1))[:, None]  # (m, 1)
        if spurious_latents:
            latents[:, 0], latents[:, 1] = strength * spurious, strength * (1 - spurious)
            resid = latents @ W_dec
        else:
            resid = latents @ W_dec + gender * outside
        return resid + resid_noise * torch.randn(m, d_model, generator=gen), latents

    def balanced():
        target, spurious = torch.arange(n) % 2, (torch.arange(n) // 2) % 2
        resid, latents = make(target, spurious)
        return PooledSplit(resid, latents, target), PooledSplit(resid, latents, spurious)

    def biased():
        agree = binary_labels(n, gen)
        return PooledSplit(*make(agree, agree), agree)

    biased_train = biased()
    splits = (biased_train, *balanced(), *balanced())
    return splits, W_dec, biased()


def test_scr_ablating_the_spurious_latents_recovers_the_target(gen, seed):
    """The biased probe (its last epoch: no biased test set) reads gender first; with gender's
    two latents ablated it reads the target as well as the oracle, up to what 20 epochs of
    SAEBench's probe recipe learn of the target (score >= 0.95 over 160 seeds tried; the
    target signal of 2.5 keeps the probe's random init on noise directions from mattering)."""
    splits, W_dec, _ = scr_world(gen, 800, target_signal=2.5)
    result = probing.scr(*splits, W_dec, n_values=(2, 5), seed=seed)
    assert result["base_accuracy_target"] < 0.95 <= result["oracle_accuracy_target"]  # the probe is biased
    assert sorted(result["dir1"]["ranked_latents"][:2]) == [0, 1]
    assert result["dir1"]["score"]["2"] > 0.85
    # the reported metric is the direction whose attribute the biased probe reads less
    chosen = 1 if result["base_accuracy_target"] <= result["base_accuracy_spurious"] else 2
    assert result["direction"] == chosen and result["scr_metric"] == result[f"dir{chosen}"]["score"]
    json.dumps(result)


def test_scr_is_zero_when_no_latent_carries_the_spurious_attribute(gen, seed):
    """Gender is in the residual stream but outside the dictionary; the target latents are
    independent of gender (no effect), so only noise latents can be ablated."""
    splits, W_dec, _ = scr_world(gen, 800, spurious_latents=False, target_noise=0.0)
    result = probing.scr(*splits, W_dec, n_values=(2, 5), seed=seed)
    assert result["base_accuracy_target"] < 0.95 <= result["oracle_accuracy_target"]  # the bias is still there
    assert not {2, 3} & set(result["dir1"]["ranked_latents"])
    assert abs(result["dir1"]["score"]["2"]) < 0.1 and abs(result["dir1"]["score"]["5"]) < 0.1


def test_scr_is_zero_without_spurious_signal_in_the_probes_input(gen, seed):
    """No gender in the residual stream: the biased probe reads the target only, it is as good as
    the oracle, and removing "gender" scores 0 whatever is ablated (SAEBench's guard). (SAEBench's
    rule then reports direction 2, whose gender oracle is at chance: that direction is noise.)"""
    splits, W_dec, _ = scr_world(gen, 400, spurious_signal=0.0, resid_noise=0.05)
    result = probing.scr(*splits, W_dec, n_values=(2, 5), seed=seed)
    assert result["base_accuracy_target"] == result["oracle_accuracy_target"] == 1.0
    assert result["dir1"]["score"] == {"2": 0.0, "5": 0.0}
    assert result["direction"] == 2 and result["oracle_accuracy_spurious"] < 0.6


def test_scr_reuses_given_probes(gen):
    splits, W_dec, _ = scr_world(gen, 200)
    cache = {}
    first = probing.scr(*splits, W_dec, n_values=(2,), probes=cache)
    assert set(cache) == {"biased", "target", "spurious"}
    marker = cache["biased"]
    again = probing.scr(*splits, W_dec, n_values=(2,), probes=cache)
    assert cache["biased"] is marker and again["scr_metric"] == first["scr_metric"]


def test_scr_probes_are_saebenchs(gen, seed):
    """Each SCR probe is SAEBench's AdamW recipe on the raw activations, kept at its best epoch
    on its own test set: the attributes' balanced test sets, and the biased test set."""
    splits, W_dec, biased_test = scr_world(gen, 160)
    biased_train, target_train, spurious_train, target_test, spurious_test = splits
    cache = {}
    probing.scr(*splits, W_dec, n_values=(2,), seed=seed, probes=cache, biased_test=biased_test)
    for name, train, test, probe_seed in (("spurious", spurious_train, spurious_test, seed),
                                          ("target", target_train, target_test, seed + 1),
                                          ("biased", biased_train, biased_test, seed + 2)):
        fit = probes.fit_adamw_probe(train.resid, train.labels, probes.SCR_TPP_PROBE, probe_seed,
                                     select_on=(test.resid, test.labels))
        assert torch.equal(cache[name].weight, fit.probe.weight) and cache[name].bias == fit.probe.bias, name


def two_scale_world(gen, n):
    """Gender is carried by two latents on the axes of d_model=8 (W_dec = I, so each residual
    coordinate is one latent): latent 0 with a large spread (scale 100, about one standard
    deviation between the genders), latent 1 tiny (scale 0.01) but clean (four standard
    deviations apart); latent 2 is the target, 3..7 noise."""
    d = 8
    W_dec = torch.eye(d)

    def make(target, spurious):
        m = len(target)
        latents = torch.relu(torch.randn(m, d, generator=gen)) * 0.2
        latents[:, 0] = 100 * (spurious - 0.5 + torch.randn(m, generator=gen))
        latents[:, 1] = 0.01 * (spurious + 0.25 * torch.randn(m, generator=gen))
        latents[:, 2] = target * (1 + 0.5 * torch.rand(m, generator=gen))
        return PooledSplit(latents @ W_dec, latents, None)

    def split(target, spurious):
        made = make(target, spurious)
        return made._replace(labels=target), made._replace(labels=spurious)

    balanced = (torch.arange(n) % 2, (torch.arange(n) // 2) % 2)
    agree = torch.arange(n) % 2
    biased = make(agree, agree)._replace(labels=agree)
    return (biased, *split(*balanced), *split(*balanced)), W_dec


def test_scr_ranks_latents_by_the_raw_space_probe_weight(gen, seed):
    """SAEBench's spurious probe reads raw activations: the large-spread latent 0 carries most of
    its logit, and ``|mean difference| * |w . W_dec[j]|`` ranks it first (by a factor over 100
    in 40 seeds tried). A probe fitted on standardised activations (the old msae probe: sklearn's
    L2 logistic regression on standardised features) leans on the clean latent 1 instead and
    ranks it first (latent 0's effect at most 0.13 of latent 1's in the same seeds)."""
    splits, W_dec = two_scale_world(gen, 400)
    cache = {}
    result = probing.scr(*splits, W_dec, n_values=(2,), seed=seed, probes=cache)
    assert result["dir1"]["ranked_latents"][0] == 0
    spurious_train = splits[2]
    effects = probing.scr_latent_effects(spurious_train.latents, spurious_train.labels, cache["spurious"], W_dec)
    assert effects[0] > 10 * effects[1]
    # the counterfactual: the same ranking with a probe fitted on standardised activations
    scaler = StandardScaler().fit(spurious_train.resid.numpy())
    standardised = LogisticRegression().fit(scaler.transform(spurious_train.resid.numpy()), spurious_train.labels.numpy())
    raw_weight = torch.from_numpy(standardised.coef_[0] / scaler.scale_)
    effects = probing.scr_latent_effects(spurious_train.latents, spurious_train.labels, LinearProbe(raw_weight, 0.0), W_dec)
    assert effects[1] > 2 * effects[0]


# --- TPP ----------------------------------------------------------------------------------


def tpp_world(gen, n_per_class, n_classes, class_latents=True):
    """Class c fires latent c (about 2) on its texts; latents K..K+5 are noise. With
    ``class_latents=False`` the class signal lives in directions no latent decodes to, and the
    latents are noise."""
    d_model, d_sae = 24, n_classes + 6
    rows = orthonormal_rows(d_sae + n_classes, d_model, gen).float()
    W_dec = rows[:d_sae]
    hidden = rows[d_sae:]  # class directions outside the dictionary

    def make():
        labels = torch.arange(n_classes).repeat_interleave(n_per_class)
        m = len(labels)
        latents = torch.relu(torch.randn(m, d_sae, generator=gen)) * 0.5
        one_hot = torch.nn.functional.one_hot(labels, n_classes).float() * (2 + 0.2 * torch.rand(m, 1, generator=gen))
        if class_latents:
            latents[:, :n_classes] = one_hot
            resid = latents @ W_dec
        else:
            resid = latents @ W_dec + one_hot @ hidden
        return PooledSplit(resid + 0.2 * torch.randn(m, d_model, generator=gen), latents, labels)

    return make(), make(), W_dec


def test_tpp_is_large_for_class_latents(gen, seed):
    """Ablating class c's latent ranks first for c and hurts c's probe more than the others.
    SAEBench's probes also read the other classes' latents as evidence against their class, so
    the ablation turns class c's rows in the other probes' test sets (at most a sixth of them)
    into rows with no class latent, and some flip: the unintended drop is not 0. Over 25 seeds
    TPP at n=1 was 0.18 to 0.39 here (0 for unrelated latents, next test)."""
    train, test, W_dec = tpp_world(gen, 150, 4)
    result = probing.tpp(train, test, W_dec, n_values=(1, 2), seed=seed, class_names=["a", "b", "c", "d"])
    assert result["tpp"]["1"] > 0.1
    for c, name in enumerate("abcd"):
        per_class = result["per_class"][name]
        assert per_class["ranked_latents"][0] == c
        assert per_class["clean_accuracy"] > 0.95
        assert per_class["intended_drop"]["1"] > per_class["unintended_drop"]["1"]
    json.dumps(result)


def test_tpp_is_near_zero_for_unrelated_latents(gen, seed):
    train, test, W_dec = tpp_world(gen, 150, 4, class_latents=False)
    result = probing.tpp(train, test, W_dec, n_values=(1, 5), seed=seed)
    for n in ("1", "5"):
        assert abs(result["tpp"][n]) < 0.05


def test_one_vs_rest_rows_are_balanced(gen):
    labels = torch.randint(4, (200,), generator=gen)
    rows, y = probing.one_vs_rest_rows(labels, 2, gen)
    assert (labels[rows[y == 1]] == 2).all() and (labels[rows[y == 0]] != 2).all()
    assert int(y.sum()) == int((labels == 2).sum()) == int((y == 0).sum())
    assert len(set(rows.tolist())) == len(rows)


def test_one_vs_rest_negatives_come_evenly_from_the_other_classes(gen):
    """SAEBench draws ceil(60 / 3) = 20 rows from each other class, however large it is."""
    labels = torch.cat([torch.full((n,), c) for c, n in ((0, 300), (1, 30), (2, 60), (3, 30))])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    rows, y = probing.one_vs_rest_rows(labels, 2, gen)
    assert [int((labels[rows[y == 0]] == c).sum()) for c in (0, 1, 3)] == [20, 20, 20]
    with pytest.raises(ValueError, match="uneven"):
        probing.one_vs_rest_rows(torch.cat([torch.full((60,), 2), torch.zeros(10), torch.ones(300)]).long(), 2, gen)


def test_tpp_rejects_mismatched_classes(gen):
    train, test, W_dec = tpp_world(gen, 20, 3)
    test = PooledSplit(test.resid, test.latents, test.labels.clamp(max=1))
    with pytest.raises(ValueError, match="same >= 2 classes"):
        probing.tpp(train, test, W_dec, n_values=(1,))
