import copy

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from msae.evals import probes
from msae.evals.probes import AdamWRecipe


def binary_labels(n, gen):
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=gen)[: n // 2]] = 1
    return y


def overlapping_classes(n, d, gen):
    """Features of very different scales and offsets; the classes overlap (a finite optimum)."""
    y = binary_labels(n, gen)
    scale = 10 ** (4 * torch.rand(d, generator=gen) - 2)  # 0.01 .. 100
    direction = torch.randn(d, generator=gen)
    x = (torch.randn(n, d, generator=gen) + y[:, None] * direction + torch.randn(d, generator=gen)) * scale
    return x, y


# --- scikit-learn ---------------------------------------------------------------------------


@pytest.mark.parametrize("C, class_weight", [(1.0, None), (0.05, None), (1.0, "balanced")])
def test_sklearn_probe_is_sklearns_fit_on_raw_features(gen, C, class_weight):
    """The probe is LogisticRegression(C, max_iter=1000) (SAEBench's train_sklearn_probe; L2 is
    sklearn's default) fitted on the raw float32 features: the same coefficients, bit for bit,
    and the same decision function up to float32 rounding (sklearn computes it in float32)."""
    x, y = overlapping_classes(400, 5, gen)
    probe = probes.fit_sklearn_probe(x, y, C=C, class_weight=class_weight)
    x32 = x.numpy().astype("float32")
    reference = LogisticRegression(C=C, max_iter=1000, class_weight=class_weight).fit(x32, y.numpy())
    assert torch.equal(probe.weight, torch.from_numpy(reference.coef_[0]).double())
    assert probe.bias == float(reference.intercept_[0])
    expected = torch.from_numpy(reference.decision_function(x32)).double()
    logits = probe.logits(x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4 * float(expected.abs().max()))
    clear = logits.abs() > 1e-3 * float(expected.abs().max())
    assert torch.equal(probe.predict(x)[clear], torch.from_numpy(reference.predict(x32)).long()[clear])


def test_probes_reject_bad_input(gen):
    x = torch.randn(20, 3, generator=gen)
    y = binary_labels(20, gen)
    recipe = AdamWRecipe(batch_size=4, epochs=1, lr=1e-3)
    for fit in (probes.fit_sklearn_probe, lambda x, y: probes.fit_adamw_probe(x, y, recipe)):
        with pytest.raises(ValueError, match="both classes"):
            fit(x, torch.ones(20, dtype=torch.long))
        with pytest.raises(ValueError, match="NaN"):
            fit(torch.where(x > 1, float("nan"), x), y)
        with pytest.raises(ValueError, match="shape"):
            fit(x, y[:10])
        with pytest.raises(ValueError, match="0 or 1"):
            fit(x, y * 2)
    with pytest.raises(ValueError, match="width"):
        probes.fit_adamw_probe(x, y, recipe, select_on=(x[:, :2], y))
    with pytest.raises(ValueError, match="at least 1"):
        AdamWRecipe(batch_size=0, epochs=1, lr=1e-3)


# --- AdamW on minibatches ----------------------------------------------------------------------


def saebench_style_probe(x, y, x_test, y_test, recipe, seed):
    """SAEBench's train_probe_gpu written out plainly: torch.nn.Linear and torch.randperm on the
    global generator seeded with ``seed``, AdamW with torch's defaults, BCE plus the L1 term,
    the best epoch on the test set kept, patience counted in epochs. Returns the probe and the
    test accuracy after each epoch that ran."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        linear = torch.nn.Linear(x.shape[1], 1)
        optimizer = torch.optim.AdamW(linear.parameters(), lr=recipe.lr)
        best, best_accuracy, waited, history = None, 0.0, 0, []
        for _ in range(recipe.epochs):
            order = torch.randperm(len(x))
            for start in range(0, len(x), recipe.batch_size):
                batch = order[start:start + recipe.batch_size]
                loss = torch.nn.BCEWithLogitsLoss()(linear(x[batch]).squeeze(-1), y[batch].float())
                if recipe.l1_penalty:
                    loss = loss + recipe.l1_penalty * linear.weight.abs().sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if x_test is None:
                continue
            with torch.no_grad():
                accuracy = ((linear(x_test).squeeze(-1) > 0).long() == y_test).float().mean().item()
            history.append(accuracy)
            if accuracy > best_accuracy:
                best, best_accuracy, waited = copy.deepcopy(linear), accuracy, 0
            else:
                waited += 1
            if waited >= recipe.patience:
                break
    return (best if best is not None else linear), history


@pytest.fixture
def one_cpu_thread():
    """fit_adamw_probe trains on one CPU thread; so does the reference (the same summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = {  # recipe, n, d
    "scr_tpp": (probes.SCR_TPP_PROBE, 240, 12),
    "llm": (probes.LLM_PROBE, 600, 20),
    "patience_2": (AdamWRecipe(batch_size=16, epochs=40, lr=3e-2, l1_penalty=1e-3, patience=2), 300, 8),
    "no_selection": (AdamWRecipe(batch_size=32, epochs=5, lr=1e-2), 200, 8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adamw_probe_is_saebenchs_recipe(gen, seed, case, one_cpu_thread):
    """Same seed, same data: the probe is SAEBench's, to float32 rounding (the same operations in
    the same order; on this CPU they agree bit for bit), after the same epochs with the same test
    accuracies (float32 in the reference: equal to 1e-7)."""
    recipe, n, d = CASES[case]
    x, y = overlapping_classes(n + n // 2, d, gen)
    x = (x - x.mean(0)) / x.std(0)  # well scaled, so that the probe learns within the epochs
    x, x_test, y, y_test = x[:n], x[n:], y[:n], y[n:]
    select = case != "no_selection"
    fit = probes.fit_adamw_probe(x, y, recipe, seed, select_on=(x_test, y_test) if select else None)
    reference, history = saebench_style_probe(x, y, x_test if select else None, y_test, recipe, seed)
    torch.testing.assert_close(fit.probe.weight, reference.weight.detach()[0].double())
    torch.testing.assert_close(fit.probe.bias, reference.bias.item())
    assert fit.selection_accuracy == pytest.approx(history, abs=1e-7)
    if case == "scr_tpp":
        assert len(history) == recipe.epochs  # patience = epochs: it never stops early
    elif select:
        assert len(history) < recipe.epochs  # the case covers early stopping
