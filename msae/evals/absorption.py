"""Feature absorption and feature splitting on the first-letter task (Chanin et al. 2024, "A is
for Absorption"), as SAEBench's ``absorption`` eval defines them. Paper Figs 1 and 6.

Pipeline, once per model and hook point:
    letter_tokens(tokenizer)            vocabulary tokens made of letters only, split 80/20
    letter_activations(model, ...)      residual stream at the word in an ICL prompt ending in
                                        "{word} has the first letter:"            (n, d_model)
    train_letter_probes(data)           one-vs-rest logistic probes, all 26 letters at once,
                                        with SAEBench's training recipe
and per SAE:
    evaluate_absorption(sae, data, probes)
        1. k-sparse probing: rank latents by an L1-regularised logistic probe on the SAE's
           latents; the letter's main latents are the top k, k grown while the test F1 of a
           logistic probe on those k latents rises by more than 0.03 (k <= 10). Their number
           is the letter's split count.
        2. absorption fraction, on test words of the letter that the model probe gets right:
           of the activation's projection on the probe direction, the share carried by up to
           3 other probe-aligned latents instead of the main latents.
        3. means over the letters whose probe has test F1 > 0.6; not scored (None) when fewer
           than 20 letters pass, as SAEBench declines to score such a model.

Where we differ from SAEBench, and why:
- The activations of each word are computed once and reused for every SAE and both steps
  (SAEBench reruns the model with freshly shuffled ICL examples when it measures absorption).
  ICL examples are drawn with a seed (SAEBench's are unseeded), and the word's position is found
  from the tokenisation rather than fixed at -6 tokens from the end, so any tokenizer works.
- The k-sparse probes' latent ranking comes from an L1 probe solved to convergence (FISTA) rather
  than 50 epochs of Adam, so it does not depend on the optimiser's step count; latents at exactly
  zero are then ranked by how hard the loss pulls them positive. The k-sparse probes themselves
  minimise scikit-learn's ``LogisticRegression(class_weight="balanced")`` objective, by batched
  Newton steps over all letters at once (tested equal to scikit-learn's fit).
- ``train_letter_probes(..., recipe="converged")`` fits the model probes to convergence instead
  of SAEBench's recipe, to show whether the recipe moves the result.
"""

from __future__ import annotations

import json
import random
import statistics
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from .probes import one_cpu_thread

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ProbeRecipe = Literal["saebench", "converged"]
REFERENCE_D_MODEL = 2304  # Gemma-2-2B's width, for which SAEBench set its cosine thresholds
UNIT_NORM_TOLERANCE = 1e-3  # decoder rows further than this from norm 1 are rescaled
PROMPT_TEMPLATE = "{word} has the first letter:"
_ASCII_LETTERS = frozenset(LETTERS + LETTERS.upper())


# --- vocabulary ---------------------------------------------------------------------------


@dataclass
class LetterWords:
    """Words (as the tokenizer spells them, e.g. " cat"), their first letter and their split.

    Attributes:
        words: the n words, each a non-empty string.
        letters: (n,) long, 0..25: the index of each word's first letter in ``LETTERS``.
        is_train: (n,) bool, True for the train split.
    """

    words: list[str]
    letters: torch.Tensor
    is_train: torch.Tensor

    def __post_init__(self):
        self.letters = torch.as_tensor(self.letters, dtype=torch.long)
        self.is_train = torch.as_tensor(self.is_train, dtype=torch.bool)
        n = len(self.words)
        if self.letters.shape != (n,) or self.is_train.shape != (n,):
            raise ValueError(
                f"{n} words but letters has shape {tuple(self.letters.shape)} and is_train "
                f"{tuple(self.is_train.shape)}; both must be ({n},)"
            )
        if n and not (0 <= int(self.letters.min()) and int(self.letters.max()) < len(LETTERS)):
            raise ValueError("letters must be indices 0..25 into LETTERS")
        if any(not isinstance(w, str) or not w.strip() for w in self.words):
            raise ValueError("every word must be a non-empty string")

    def __len__(self) -> int:
        return len(self.words)


def first_letter_index(word: str) -> int:
    """0..25 for the word's first letter (case-insensitive, leading space ignored)."""
    return LETTERS.index(word.strip()[0].lower())


def is_letter_word(text: str) -> bool:
    """A single word of ASCII letters, with at most one leading space (SAEBench's filter)."""
    text = text[1:] if text.startswith(" ") else text
    return bool(text) and all(c in _ASCII_LETTERS for c in text)


def letter_tokens(tokenizer, train_fraction: float = 0.8, seed: int = 0, max_words: int | None = None) -> LetterWords:
    """The vocabulary tokens that spell one word of letters (``" cat"``, ``"Paris"``), labelled
    by first letter (lower-cased, as SAEBench does) and split at random into train and test.

    ``max_words`` keeps a random subset (the default model has ~47k such tokens; the notebooks
    use a few thousand). The split depends only on the set of words and ``seed``.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    spelled = {tokenizer.convert_tokens_to_string([token]) for token in tokenizer.get_vocab()}
    words = sorted(w for w in spelled if is_letter_word(w))
    if not words:
        raise ValueError("the tokenizer has no token made of letters only")
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed))
    if max_words is not None:
        if max_words < 2:
            raise ValueError(f"max_words must be at least 2, got {max_words}")
        order = order[:max_words]
    words = [words[i] for i in order.tolist()]
    is_train = torch.zeros(len(words), dtype=torch.bool)
    is_train[: int(len(words) * train_fraction)] = True
    return LetterWords(words, torch.tensor([first_letter_index(w) for w in words]), is_train)


# --- prompts and activations ----------------------------------------------------------------


def letter_prompts(
    words: LetterWords, n_icl_examples: int = 10, seed: int = 0, template: str = PROMPT_TEMPLATE
) -> tuple[list[str], list[int]]:
    """SAEBench's ICL prompts: ``n_icl_examples`` other words of the same split, each answered
    (``" cat has the first letter: C"``), one per line, then the word's own unanswered line.

    Returns the prompts and, for each, the character offset just past the word.
    """
    if "{word}" not in template:
        raise ValueError(f"template must contain '{{word}}', got {template!r}")
    head, tail = template.split("{word}", 1)
    rng = random.Random(seed)
    pools = {True: [], False: []}
    for word, train in zip(words.words, words.is_train.tolist()):
        pools[train].append(word)
    prompts, word_ends = [], []
    for word, train in zip(words.words, words.is_train.tolist()):
        pool = pools[train]
        picks = rng.sample(pool, min(n_icl_examples + 1, len(pool)))
        examples = [w for w in picks if w != word][:n_icl_examples]
        lines = [f"{head}{w}{tail} {w.strip()[0].upper()}" for w in examples]
        context = "".join(line + "\n" for line in lines) + head
        prompts.append(context + word + tail)
        word_ends.append(len(context) + len(word))
    return prompts, word_ends


@torch.no_grad()
def letter_activations(
    model,
    hook_name: str,
    words: LetterWords,
    n_icl_examples: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    template: str = PROMPT_TEMPLATE,
    progress: bool = False,
) -> torch.Tensor:
    """(n_words, d_model) float32: the activation at ``hook_name`` at the word's (last) token of
    its prompt (``letter_prompts``). One forward per batch, stopped after the hook's layer.

    Prompts are tokenised as ``model.to_tokens`` does (BOS per the model's default), run only up
    to the word (the tokens after it cannot change a causal model's activation there) and padded
    on the right, which leaves the earlier positions untouched.
    """
    from tqdm.auto import tqdm

    from ..data.models import check_hook_name

    layer = check_hook_name(model, hook_name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts, word_ends = letter_prompts(words, n_icl_examples, seed, template)
    tokens, positions = [], []
    for prompt, end in zip(prompts, word_ends):
        full = model.to_tokens(prompt, truncate=False)[0]
        upto_word = model.to_tokens(prompt[:end], truncate=False)[0]
        position = len(upto_word) - 1
        if len(full) > model.cfg.n_ctx:
            raise ValueError(f"a prompt has {len(full)} tokens, more than the model's n_ctx={model.cfg.n_ctx}; "
                             "use fewer ICL examples")
        if not torch.equal(full[: len(upto_word)], upto_word):
            raise ValueError(f"the tokenizer merges the word with the text after it in {prompt[-80:]!r}")
        tokens.append(upto_word)  # a causal model's activation at the word ignores what follows it
        positions.append(position)
    out = torch.empty(len(prompts), model.cfg.d_model)
    device = model.cfg.device
    for start in tqdm(range(0, len(prompts), batch_size), desc="letter activations", disable=not progress):
        chunk = tokens[start : start + batch_size]
        lengths = torch.tensor([len(t) for t in chunk])
        batch = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (B, T), zeros on the right
        mask = (torch.arange(batch.shape[1]) < lengths[:, None]).long()
        _, cache = model.run_with_cache(
            batch.to(device), attention_mask=mask.to(device), names_filter=hook_name, stop_at_layer=layer + 1
        )
        at_word = torch.tensor(positions[start : start + len(chunk)])
        out[start : start + len(chunk)] = cache[hook_name][torch.arange(len(chunk)), at_word].float().cpu()
    return out


@dataclass
class LetterDataset:
    """The words and their activations: computed once per model and hook, reused per SAE.

    Attributes:
        words: the words, their letters and split.
        activations: (n, d_model) float32, the activation at each word's (last) token in its prompt.
        hook_name: the hook point they were read at.
        model_name: the model they come from.
        n_icl_examples: answered examples before the word in each prompt.
        seed: seed of the train/test split and of the examples' choice.
    """

    words: LetterWords
    activations: torch.Tensor
    hook_name: str = ""
    model_name: str = ""
    n_icl_examples: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.activations.ndim != 2 or self.activations.shape[0] != len(self.words):
            raise ValueError(
                f"activations must be ({len(self.words)}, d_model), got {tuple(self.activations.shape)}"
            )
        if not torch.isfinite(self.activations).all():
            raise ValueError("activations contain NaN or infinite values")
        self.activations = self.activations.float()


def collect_letter_dataset(
    model,
    hook_name: str,
    train_fraction: float = 0.8,
    seed: int = 0,
    max_words: int | None = None,
    n_icl_examples: int = 10,
    batch_size: int = 32,
    progress: bool = False,
) -> LetterDataset:
    """``letter_tokens`` on the model's tokenizer, then ``letter_activations``."""
    words = letter_tokens(model.tokenizer, train_fraction, seed, max_words)
    acts = letter_activations(model, hook_name, words, n_icl_examples, seed, batch_size, progress=progress)
    return LetterDataset(words, acts, hook_name, getattr(model.cfg, "model_name", ""), n_icl_examples, seed)


def save_letter_dataset(data: LetterDataset, folder: str | Path) -> Path:
    """Write ``letter_activations.pt`` and ``letter_words.json`` into ``folder``."""
    from ..files import atomic_write, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "letter_activations.pt", lambda f: torch.save(data.activations.contiguous(), f))
    write_json(folder / "letter_words.json", {
        "words": data.words.words,
        "letters": data.words.letters.tolist(),
        "is_train": data.words.is_train.tolist(),
        "hook_name": data.hook_name,
        "model_name": data.model_name,
        "n_icl_examples": data.n_icl_examples,
        "seed": data.seed,
    })
    return folder


def load_letter_dataset(folder: str | Path) -> LetterDataset:
    folder = Path(folder)
    meta = json.loads((folder / "letter_words.json").read_text())
    acts = torch.load(folder / "letter_activations.pt", weights_only=True)
    words = LetterWords(meta["words"], torch.tensor(meta["letters"]), torch.tensor(meta["is_train"]))
    return LetterDataset(words, acts, meta["hook_name"], meta["model_name"], meta["n_icl_examples"], meta["seed"])


# --- logistic regression helpers (vectorised over letters) ----------------------------------


def f1_scores(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Per-column F1 of bool (n, C) predictions; 0 where a column has no positives at all."""
    predicted, actual = predicted.bool(), actual.bool()
    tp = (predicted & actual).sum(0).double()
    denominator = predicted.sum(0).double() + actual.sum(0).double()
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))


def _one_hot(letters: torch.Tensor) -> torch.Tensor:
    return F.one_hot(letters, len(LETTERS)).double()  # (n, 26)


def _balanced_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """(C,) mean over rows of SAEBench's class-balanced BCE: positives weighted n_neg / n_pos."""
    loss = pos_weight * targets * F.softplus(-logits) + (1 - targets) * F.softplus(logits)
    return loss.mean(0)


def _pos_weight(targets: torch.Tensor) -> torch.Tensor:
    n_pos = targets.sum(0)
    return (len(targets) - n_pos) / n_pos.clamp_min(1)


# --- the model-activation probes --------------------------------------------------------------


@dataclass
class LetterProbes:
    """One-vs-rest logistic probes on model activations: ``logits = x @ weight.T + bias``.

    Attributes:
        weight: (26, d_model), one row per letter.
        bias: (26,).
        test_f1: (26,) each probe's F1 on the test split (predicting the letter where logit > 0).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    test_f1: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_model) -> (n, 26)."""
        return x.to(self.weight.dtype) @ self.weight.T + self.bias

    @property
    def directions(self) -> torch.Tensor:
        """(26, d_model) unit probe directions."""
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)


def train_letter_probes(
    data: LetterDataset,
    recipe: ProbeRecipe = "saebench",
    seed: int = 0,
    l2: float = 1e-3,
    max_iter: int = 500,
) -> LetterProbes:
    """Fit the 26 one-vs-rest probes on the train split and score them on the test split.

    ``recipe``:
        "saebench": SAEBench's own recipe (``_fit_probes_saebench``): minibatch Adam on the raw
            activations, so the probe directions are those SAEBench would use.
        "converged": the same class-balanced BCE plus ``l2 / 2 * |w|^2``, solved to convergence
            (``_fit_probes_converged``); kept to show whether the optimiser moves the result.
    """
    x = data.activations[data.words.is_train].double()  # (n, d)
    if len(x) == 0:
        raise ValueError("the dataset has no train words")
    targets = _one_hot(data.words.letters[data.words.is_train])  # (n, 26)
    if recipe == "saebench":
        weight, bias = _fit_probes_saebench(x.float(), targets.float(), seed)
    elif recipe == "converged":
        weight, bias = _fit_probes_converged(x, targets, l2, max_iter)
    else:
        raise ValueError(f"recipe must be 'saebench' or 'converged', got {recipe!r}")
    probes = LetterProbes(weight.double(), bias.double(), torch.zeros(len(LETTERS), dtype=torch.float64))
    test = ~data.words.is_train
    if test.any():
        predicted = probes.logits(data.activations[test].double()) > 0
        probes.test_f1 = f1_scores(predicted, _one_hot(data.words.letters[test]) > 0)
    return probes


def _fit_probes_saebench(
    x: torch.Tensor,
    targets: torch.Tensor,
    seed: int,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-2,
    end_lr: float = 1e-5,
    weight_decay: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's letter-probe recipe (``evals/absorption``: its probes are trained once per
    model with these settings): a linear layer with PyTorch's default initialisation, Adam with
    L2 weight decay on weights and bias, the class-balanced BCE (positives weighted n_neg / n_pos
    of the whole train set) averaged over the minibatch and the letters, shuffled minibatches, and a learning
    rate decayed exponentially from ``lr`` to ``end_lr`` over the epochs. Seeded: the same
    ``seed`` gives the same probes.

    Args: x (n, d) float32 raw activations, targets (n, C) in {0, 1}. Returns weight (C, d), bias (C,).
    """
    generator = torch.Generator().manual_seed(seed)
    n, d = x.shape
    bound = 1 / d**0.5  # nn.Linear's default init, for weight and bias alike
    weight = ((torch.rand(targets.shape[1], d, generator=generator) * 2 - 1) * bound).requires_grad_(True)
    bias = ((torch.rand(targets.shape[1], generator=generator) * 2 - 1) * bound).requires_grad_(True)
    pos_weight = _pos_weight(targets)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    decay = (end_lr / lr) ** (1 / epochs)
    with torch.enable_grad(), one_cpu_thread(x.device):
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                logits = x[rows] @ weight.T + bias
                loss = F.binary_cross_entropy_with_logits(logits, targets[rows], pos_weight=pos_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] *= decay
    return weight.detach(), bias.detach()


def _fit_probes_converged(
    x: torch.Tensor, targets: torch.Tensor, l2: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All 26 probes in one L-BFGS run on the sum of their independent objectives: per letter,
    the class-balanced BCE (mean over words) plus ``l2 / 2 * |w|^2``, with activations centred
    and scaled by one scalar to unit mean squared norm while fitting. One scalar keeps the
    penalty isotropic in activation space, so the probe directions are those of the raw
    activations. x (n, d) and targets (n, C) float64; returns raw-space weight (C, d), bias (C,)."""
    mean = x.mean(0)
    scale = (x - mean).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
    xs = (x - mean) / scale
    pos_weight = _pos_weight(targets)
    weight = torch.zeros(targets.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(targets.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = _balanced_bce(xs @ weight.T + bias, targets, pos_weight).sum() + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    # Undo the standardisation: w.(x - m)/s + b = (w/s).x + (b - w.m/s).
    raw_weight = weight.detach() / scale
    return raw_weight, bias.detach() - raw_weight @ mean


# --- k-sparse probing on SAE latents ---------------------------------------------------------


def l1_probe_weights(
    acts: torch.Tensor,
    letters: torch.Tensor,
    l1: float = 0.01,
    n_iter: int = 300,
    working_size: int = 64,
    max_rounds: int = 10,
):
    """The L1-regularised one-vs-rest logistic probes SAEBench ranks latents with. Per letter:
    class-balanced BCE (mean over rows) + ``l1 * |w|_1`` on (n, d_sae) ``acts``.

    Solved on working sets, as L1 solvers usually are: FISTA on each letter's ``working_size``
    most promising latents, then one full gradient; latents that violate the optimality
    condition (|gradient| > l1 at zero weight) join the set, until none does.

    Returns ``(weight (26, d_sae), bias (26,), gradient (26, d_sae))``, the last being the
    smooth part's gradient at the solution (used to rank latents left at zero). Letters
    without positive (or negative) rows get zeros.
    """
    n, d = acts.shape
    acts = acts.float()
    all_targets = _one_hot(letters).float()  # (n, 26)
    # Only letters with both classes in the data have a finite solution; others stay at zero.
    n_pos = all_targets.sum(0)
    fitted = ((n_pos > 0) & (n_pos < n)).nonzero()[:, 0]
    targets = all_targets[:, fitted]  # (n, C)
    pos_weight = _pos_weight(targets)

    def full_gradient(weight, bias):
        z = acts @ weight.T + bias  # (n, C)
        residual = (torch.sigmoid(z) * (1 - targets) - torch.sigmoid(-z) * targets * pos_weight) / n
        return residual.T @ acts  # (C, d)

    weight = torch.zeros(len(fitted), d)
    bias = torch.zeros(len(fitted))
    gradient = full_gradient(weight, bias)
    working = gradient.abs().topk(min(working_size, d), dim=1).indices  # (C, M)
    for _ in range(max_rounds if len(fitted) else 0):
        x = acts.T[working]  # (C, M, n): each letter's working latents
        w, bias = _fista_logistic(x, targets.T, pos_weight, weight.gather(1, working), bias, l1, n_iter)
        weight = torch.zeros_like(weight).scatter_(1, working, w)
        gradient = full_gradient(weight, bias)
        outside = torch.ones_like(weight, dtype=torch.bool).scatter_(1, working, False)
        violation = torch.where(outside, gradient.abs() - l1, torch.full_like(gradient, -torch.inf))
        n_new = min(working_size, d - working.shape[1])
        if n_new == 0 or float(violation.max()) <= 1e-3 * l1:
            break
        working = torch.cat([working, violation.topk(n_new, dim=1).indices], dim=1)
    out_weight, out_gradient = torch.zeros(len(LETTERS), d), torch.zeros(len(LETTERS), d)
    out_bias = torch.zeros(len(LETTERS))
    out_weight[fitted], out_bias[fitted], out_gradient[fitted] = weight, bias, gradient
    return out_weight, out_bias, out_gradient


def _fista_logistic(x, targets, pos_weight, w, b, l1, n_iter, tol=1e-5):
    """FISTA for B independent L1 logistic problems (balanced BCE, mean over rows).

    x (B, M, n) features, targets (B, n), pos_weight (B,), w (B, M) and b (B,) the start.
    Steps use a diagonal majoriser of each Hessian, so each latent's step fits its own scale;
    momentum restarts per problem when it points uphill.
    """
    n = x.shape[2]
    pos_weight = pos_weight[:, None]
    row_weight = torch.where(targets > 0, pos_weight, torch.ones_like(targets))  # (B, n)
    # Hessian <= (1/4n) sum_i r_i a_i a_i^T <= diag((1/4n) sum_i r_i |a_ij| (|a_i|_1 + 1)).
    x = x.contiguous()
    x_t = x.transpose(1, 2).contiguous()  # (B, n, M): row-vector products are fast both ways
    abs_x_t = x_t.abs()
    weighted = row_weight * (abs_x_t.sum(2) + 1) / (4 * n)  # (B, n)
    step_w = 1 / torch.bmm(weighted[:, None, :], abs_x_t)[:, 0].clamp_min(1e-12)  # (B, M)
    step_b = 1 / weighted.sum(1)  # (B,)

    def gradient(w, b):
        z = torch.bmm(w[:, None, :], x)[:, 0] + b[:, None]  # (B, n)
        residual = (torch.sigmoid(z) * (1 - targets) - torch.sigmoid(-z) * targets * pos_weight) / n
        return torch.bmm(residual[:, None, :], x_t)[:, 0], residual.sum(1)

    v_w, v_b = w, b
    momentum = torch.ones(len(w))
    for _ in range(n_iter):
        g_w, g_b = gradient(v_w, v_b)
        moved = v_w - step_w * g_w
        new_w = torch.sign(moved) * (moved.abs() - l1 * step_w).clamp_min(0)
        new_b = v_b - step_b * g_b
        uphill = ((v_w - new_w) * (new_w - w)).sum(1) + (v_b - new_b) * (new_b - b) > 0
        momentum = torch.where(uphill, torch.ones_like(momentum), momentum)
        next_momentum = (1 + (1 + 4 * momentum**2).sqrt()) / 2
        beta = ((momentum - 1) / next_momentum)[:, None]
        change = max(float((new_w - w).abs().max()), float((new_b - b).abs().max()))
        v_w, v_b = new_w + beta * (new_w - w), new_b + beta[:, 0] * (new_b - b)
        w, b, momentum = new_w, new_b, next_momentum
        if change < tol * (1 + float(w.abs().max())):
            break
    return w, b


def rank_latents(weight: torch.Tensor, gradient: torch.Tensor, k: int) -> torch.Tensor:
    """(26, k) latent ids per letter, highest first: positive weights by size (SAEBench takes
    the top-k of the signed weights), then latents at zero by how hard the loss pulls them
    up (-gradient), then negative weights."""
    # Three tiers, each ordered within itself: tier 2 (w > 0) > tier 1 (w = 0) > tier 0 (w < 0).
    tier = (weight > 0).long() * 2 + (weight == 0).long()
    within = torch.where(weight == 0, -gradient, weight)
    order_within = within.argsort(dim=1, descending=True, stable=True)
    tier_sorted = tier.gather(1, order_within)
    order_tier = tier_sorted.argsort(dim=1, descending=True, stable=True)
    return order_within.gather(1, order_tier)[:, :k]


def fit_sparse_probes(x: torch.Tensor, targets: torch.Tensor, C: float = 1.0, n_iter: int = 100):
    """Batched scikit-learn ``LogisticRegression(C=C, class_weight="balanced")``: for each of B
    problems, minimise ``|w|^2 / 2 + C * sum_i s_i * logloss_i`` (balanced sample weights
    ``s``, unpenalised intercept) by Newton steps with backtracking.

    Args: x (B, n, k) features, targets (B, n) in {0, 1}. Returns w (B, k), b (B,).
    """
    x, targets = x.double(), targets.double()
    B, n, k = x.shape
    n_pos = targets.sum(1, keepdim=True)
    sample_weight = torch.where(targets > 0, n / (2 * n_pos.clamp_min(1)), n / (2 * (n - n_pos).clamp_min(1)))
    xb = torch.cat([x, torch.ones(B, n, 1, dtype=x.dtype)], dim=2)  # (B, n, k+1)
    penalty = torch.ones(k + 1, dtype=x.dtype)
    penalty[k] = 0  # the intercept is not penalised

    def objective(z, theta):  # z (B, n) the logits of theta (B, k+1) -> (B,)
        loss = targets * F.softplus(-z) + (1 - targets) * F.softplus(z)
        return 0.5 * (penalty * theta.pow(2)).sum(-1) + C * (sample_weight * loss).sum(-1)

    theta = torch.zeros(B, k + 1, dtype=x.dtype)
    z = torch.zeros(B, n, dtype=x.dtype)
    value = objective(z, theta)
    for _ in range(n_iter):
        p = torch.sigmoid(z)
        grad = penalty * theta + C * torch.einsum("bnk,bn->bk", xb, sample_weight * (p - targets))
        curvature = C * sample_weight * p * (1 - p)  # (B, n)
        # (The tiny ridge keeps the intercept's curvature positive when a class is absent.)
        hess = torch.diag_embed(penalty.expand(B, -1) + 1e-9 * n) + (xb * curvature[..., None]).transpose(1, 2) @ xb
        direction = -torch.linalg.solve(hess, grad)  # (B, k+1)
        decrement = -(grad * direction).sum(1)  # Newton decrement squared, >= 0
        if float((decrement / (1 + value.abs())).max()) < 1e-14:
            break
        z_direction = torch.einsum("bnk,bk->bn", xb, direction)  # logits are linear in theta
        step = torch.ones(B, dtype=x.dtype)
        for _ in range(40):  # halve the step where it does not decrease the objective enough
            new_value = objective(z + step[:, None] * z_direction, theta + step[:, None] * direction)
            ok = new_value <= value - 1e-4 * step * decrement
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step / 2)
        theta = theta + step[:, None] * direction
        z = z + step[:, None] * z_direction
        value = objective(z, theta)
    return theta[:, :k], theta[:, k]


# --- the absorption fraction -------------------------------------------------------------------


@dataclass
class AbsorptionConfig:
    """SAEBench's absorption settings (its names in brackets).

    Attributes:
        max_k: the most main latents a letter can have [max_k_value].
        f1_jump_threshold: k grows while the k-sparse probe's test F1 rises by more than this
            [f1_jump_threshold].
        l1: L1 penalty of the probe that ranks the latents [k_sparse_probe_l1_decay].
        l1_iterations: FISTA iterations per working set of that probe.
        absorber_min_cos: the least cosine with the probe direction of an absorbing latent
            [absorption_fraction_probe_cos_sim_threshold].
        max_absorbers: the most absorbing latents counted per word
            [absorption_fraction_max_absorbing_latents].
        min_projection_share: the share of the probe projection the absorbers must carry for
            a non-zero absorption fraction [probe_projection_proportion_threshold].
        full_absorption_min_cos: the least cosine with the probe direction of the latent that
            fully absorbs [full_absorption_probe_cos_sim_threshold].
        min_probe_f1: a letter's probe counts towards ``min_letters`` above this test F1
            [min_GT_probe_f1].
        min_letters: ``enough_letters`` needs this many such letters [min_feats_for_eval].
        chunk_size: words per encode and absorption chunk (memory only).
    """

    max_k: int = 10
    f1_jump_threshold: float = 0.03
    l1: float = 0.01
    l1_iterations: int = 300
    absorber_min_cos: float = 0.1
    max_absorbers: int = 3
    min_projection_share: float = 0.4
    full_absorption_min_cos: float = 0.025
    min_probe_f1: float = 0.6
    min_letters: int = 20
    chunk_size: int = 1024


class WordProjections(NamedTuple):
    """The probe-direction projections of m words (``_word_projections``), each (m,) but ``absorbers`` (m, A).

    Attributes:
        probe: ``p = x . probe direction``, the activation's projection.
        all_latents: sum over latents of ``act_j * cos_j``, the SAE's share of ``p``. It can
            exceed ``p``: the rest of ``p`` is the decoder bias's projection (and the
            reconstruction error's), which is negative when the latents carry more than all of it.
        main: the same sum over the letter's main latents.
        absorbed: the summed projection of the absorbing latents (at most ``max_absorbers``
            other latents with cos >= ``absorber_min_cos`` and a positive projection).
        absorbers: (m, max_absorbers) their latent ids, largest projection first; -1 where fewer.
        absorber_projection: (m, max_absorbers) their projections, 0 where fewer.
    """

    probe: torch.Tensor
    all_latents: torch.Tensor
    main: torch.Tensor
    absorbed: torch.Tensor
    absorbers: torch.Tensor
    absorber_projection: torch.Tensor


def _word_projections(x, acts, probe_direction, decoder_cos, main, config: AbsorptionConfig) -> WordProjections:
    proj = acts * decoder_cos  # (m, d_sae)
    candidates = ~main & (decoder_cos >= config.absorber_min_cos) & (proj > 0)
    absorber_values = torch.where(candidates, proj, torch.zeros_like(proj))
    top = absorber_values.topk(min(config.max_absorbers, proj.shape[-1]), dim=-1)
    ids = torch.where(top.values > 0, top.indices, torch.full_like(top.indices, -1))
    return WordProjections((x * probe_direction).sum(-1), proj.sum(-1), (proj * main).sum(-1),
                           top.values.sum(-1), ids, top.values)


def absorption_fractions(
    x: torch.Tensor,
    acts: torch.Tensor,
    probe_direction: torch.Tensor,
    decoder_cos: torch.Tensor,
    main: torch.Tensor,
    config: AbsorptionConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's per-word absorption fraction and full-absorption flag, for m words at once.

    Args:
        x: (m, d_model) model activations; acts: (m, d_sae) the SAE's latents on them.
        probe_direction: (m, d_model) unit probe direction of each word's letter.
        decoder_cos: (m, d_sae) cosine of each decoder row with that direction.
        main: (m, d_sae) bool, the letter's main latents.

    With ``p = x . probe``, ``proj_j = acts_j * cos_j``, ``M`` the main latents' summed proj
    and ``A`` the summed proj of the top ``max_absorbers`` other latents with cos >= 0.1 and
    proj > 0: the fraction is 0 if ``M >= p`` or ``A / p < 0.4``; else 1 if ``M <= 0``; else
    ``min(A, p - M) / (min(A, p - M) + M)``. Full absorption: no main latent fires, and the
    latent with the largest proj has cos >= 0.025 and carries at least 0.4 of ``p > 0``.
    """
    config = config or AbsorptionConfig()
    parts = _word_projections(x, acts, probe_direction, decoder_cos, main, config)
    return _fractions(parts, config), _full_absorption(parts.probe, acts, decoder_cos, main, config)


def _fractions(parts: WordProjections, config: AbsorptionConfig) -> torch.Tensor:
    p, main_projection, absorbed = parts.probe, parts.main, parts.absorbed
    positive = p > 0
    share = torch.where(positive, absorbed / p.where(positive, torch.ones_like(p)), torch.zeros_like(absorbed))
    partial = torch.minimum(absorbed, p - main_projection)
    fraction = (partial / (partial + main_projection).clamp_min(1e-12)).clamp(0, 1)
    fraction = torch.where(main_projection <= 0, torch.ones_like(fraction), fraction)
    return torch.where((main_projection >= p) | (share < config.min_projection_share), torch.zeros_like(fraction),
                       fraction)


def _full_absorption(p, acts, decoder_cos, main, config: AbsorptionConfig) -> torch.Tensor:
    proj = acts * decoder_cos
    main_silent = ~((acts.abs() >= 1e-8) & main).any(-1)
    top_projection, top_latent = proj.max(-1)
    top_cos = decoder_cos.gather(-1, top_latent[:, None])[:, 0]
    return (main_silent & (top_cos >= config.full_absorption_min_cos) & (p > 0)
            & (top_projection >= config.min_projection_share * p))


def scaled_cos_config(config: AbsorptionConfig, d_model: int) -> AbsorptionConfig:
    """``config`` with both cosine thresholds multiplied by ``sqrt(REFERENCE_D_MODEL / d_model)``.

    The cosine of two random directions in d dimensions spreads as ``1 / sqrt(d)``; SAEBench's
    thresholds (0.1 and 0.025) were set for Gemma-2-2B (d_model 2304), where 0.1 is 4.8 standard
    deviations of that spread. Scaled, they stand as far above chance at ``d_model``: a
    diagnostic beside the official number, never a replacement for it."""
    factor = (REFERENCE_D_MODEL / d_model) ** 0.5
    return replace(config, absorber_min_cos=config.absorber_min_cos * factor,
                   full_absorption_min_cos=config.full_absorption_min_cos * factor)


# --- per-SAE evaluation ------------------------------------------------------------------------


@torch.no_grad()
def encode_in_chunks(sae, x: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """(n, d_in) -> (n, d_sae) float32 on the CPU, ``sae.encode`` a chunk at a time."""
    param = sae.W_dec
    out = [sae.encode(x[i : i + chunk_size].to(param.device, param.dtype)).float().cpu()
           for i in range(0, len(x), chunk_size)]
    return torch.cat(out) if out else torch.empty(0, param.shape[0])


@torch.no_grad()
def unit_norm_latents(sae, x: torch.Tensor, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The SAE's decoder with unit-norm rows and its latents on ``x`` rescaled to match:
    ``(W_dec (d_sae, d_in), acts (n, d_sae), rescaled)``. The absorption formula reads
    ``act_j * cos_j`` as latent j's projection on the probe, which holds only for unit rows; an
    SAE whose rows are not unit norm (ReLU-L1's decoder is unconstrained) is evaluated as the
    equivalent SAE with unit rows (each latent multiplied by its row's norm), with a warning."""
    W_dec = sae.W_dec.detach().float().cpu()
    acts = encode_in_chunks(sae, x, chunk_size)
    if not torch.isfinite(acts).all():
        raise ValueError("the SAE's latents contain NaN or infinite values")
    norms = W_dec.norm(dim=1)
    rescaled = bool((norms - 1).abs().max() > UNIT_NORM_TOLERANCE) if len(norms) else False
    if rescaled:
        warnings.warn(f"the SAE's decoder rows are not unit norm (norms {float(norms.min()):.3g} to "
                      f"{float(norms.max()):.3g}); absorption is measured on the equivalent SAE with unit rows "
                      "(each latent multiplied by its row's norm)", stacklevel=3)  # past no_grad's wrapper
        acts = acts * norms
        W_dec = W_dec / norms[:, None].clamp_min(1e-12)
    return W_dec, acts, rescaled


def latent_groups(sae) -> torch.Tensor | None:
    """(d_sae,) long: the Matryoshka group (0-based) of each latent; None for a one-group SAE."""
    sizes = getattr(getattr(sae, "config", None), "group_sizes", None)
    if not sizes or len(sizes) < 2:
        return None
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


class SparseProbing(NamedTuple):
    """What k-sparse probing finds for the 26 letters (``main_latents``).

    Attributes:
        main: each letter's main latents, best first.
        f1: (max_k, 26) test F1 of the k-sparse probes for k = 1..max_k.
        test_logits: (n_test, 26) each letter's k-sparse probe, at its number of main latents,
            on the test rows (0 for a letter without main latents).
    """

    main: list[list[int]]
    f1: torch.Tensor
    test_logits: torch.Tensor


def main_latents(
    train_acts: torch.Tensor,
    train_letters: torch.Tensor,
    test_acts: torch.Tensor,
    test_letters: torch.Tensor,
    config: AbsorptionConfig | None = None,
) -> SparseProbing:
    """k-sparse probing: each letter's main latents, the k-sparse probes' test F1 and the chosen
    probes' test logits. A letter keeps the top-k latents while each step from k-1 to k raises F1
    by more than ``f1_jump_threshold`` (k = 1 always; none for a letter without train words)."""
    config = config or AbsorptionConfig()
    max_k = min(config.max_k, train_acts.shape[1])
    weight, _, gradient = l1_probe_weights(train_acts, train_letters, config.l1, config.l1_iterations)
    ranked = rank_latents(weight, gradient, max_k)  # (26, max_k)
    train_targets = _one_hot(train_letters).T  # (26, n_train)
    test_targets = _one_hot(test_letters) > 0  # (n_test, 26)
    n_pos = train_targets.sum(1)
    fitted = ((n_pos > 0) & (n_pos < len(train_letters))).nonzero()[:, 0]  # letters a probe can learn
    f1 = torch.zeros(max_k, len(LETTERS), dtype=torch.float64)
    logits = torch.zeros(max_k, len(test_letters), len(LETTERS), dtype=torch.float64)
    for k in range(1, max_k + 1 if len(fitted) else 1):
        ids = ranked[fitted, :k]  # (C, k)
        w, b = fit_sparse_probes(train_acts[:, ids].permute(1, 0, 2), train_targets[fitted])  # (C, n, k)
        logits[k - 1][:, fitted] = torch.einsum("cnk,ck->nc", test_acts[:, ids].permute(1, 0, 2).double(), w) + b
        f1[k - 1, fitted] = f1_scores(logits[k - 1][:, fitted] > 0, test_targets[:, fitted])
    jumps = (f1[1:] - f1[:-1]) > config.f1_jump_threshold  # (max_k-1, 26)
    n_main = 1 + jumps.long().cumprod(0).sum(0)  # leading run of jumps
    n_main[n_pos == 0] = 0  # no word of the letter to probe for
    chosen = logits[(n_main - 1).clamp_min(0), :, torch.arange(len(LETTERS))].T * (n_main > 0)  # (n_test, 26)
    return SparseProbing([ranked[c, : int(n_main[c])].tolist() for c in range(len(LETTERS))], f1, chosen)


@torch.no_grad()
def evaluate_absorption(
    sae, data: LetterDataset, probes: LetterProbes, config: AbsorptionConfig | None = None
) -> dict[str, Any]:
    """Absorption and feature splitting of one SAE (anything with ``encode``, ``W_dec``), as
    SAEBench scores them.

    The official numbers are means over the letters whose model probe has test F1 above
    ``min_probe_f1`` and at least one test word it gets right; with fewer than ``min_letters``
    such letters SAEBench declines to score, and so do we: the means are None, ``scored`` is
    False and ``not_scored_reason`` says why. A letter's absorption fraction is the mean over
    its probe-correct test words (SAEBench since 2025-01 scores every such word).

    ``diagnostics`` holds what SAEBench does not report: L0 on the letter prompts; the same mean
    over every letter with a probe-correct word; the fraction summed over only the words the
    main latents' k-sparse probe misses (the words SAEBench scored before 2025-01), still
    divided by all probe-correct words; the fraction with the cosine thresholds scaled to
    d_model (:func:`scaled_cos_config`); the share of the probe projection carried by all
    latents, the main latents and the absorbers; and for a Matryoshka SAE which group the main
    latents and the absorbers come from.
    """
    config = config or AbsorptionConfig()
    x = data.activations
    if sae.W_dec.shape[1] != x.shape[1] or probes.weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"widths disagree: activations d_model={x.shape[1]}, SAE W_dec {tuple(sae.W_dec.shape)}, "
            f"probes {tuple(probes.weight.shape)}"
        )
    W_dec, acts, rescaled = unit_norm_latents(sae, x, config.chunk_size)  # (d_sae, d), (n, d_sae)
    train, test = data.words.is_train, ~data.words.is_train
    letters = data.words.letters
    probing = main_latents(acts[train], letters[train], acts[test], letters[test], config)
    main_mask = torch.zeros(len(LETTERS), W_dec.shape[0], dtype=torch.bool)
    for c, ids in enumerate(probing.main):
        main_mask[c, ids] = True

    # Test words of each letter that the model probe gets right.
    right = test & (probes.logits(x.double()).gather(1, letters[:, None])[:, 0] > 0)
    idx = right.nonzero()[:, 0]
    test_row = torch.cumsum(test.long(), 0) - 1  # each row's index among the test rows
    missed = probing.test_logits[test_row[idx], letters[idx]] <= 0  # the main latents' sparse probe says no
    directions = probes.directions.float()  # (26, d)
    decoder_cos = directions @ W_dec.T  # (26, d_sae)
    words = _score_words(x[idx], acts[idx], letters[idx], directions, decoder_cos, main_mask, config)
    groups = latent_groups(sae)
    per_letter = _per_letter(letters[idx], words, missed, probing, probes, groups, config)
    scored = [row for row in per_letter.values() if row["scored"]]
    n_probe_ok = int((probes.test_f1 > config.min_probe_f1).sum())
    enough = n_probe_ok >= config.min_letters
    reason = None if enough else (f"only {n_probe_ok} of 26 letter probes have test F1 > {config.min_probe_f1}; "
                                  f"SAEBench needs {config.min_letters} to score absorption")
    official = scored if enough else []
    result = {
        "scored": enough,
        "not_scored_reason": reason,
        **_means(official, {"mean_absorption_fraction": "mean_absorption_fraction",
                            "mean_full_absorption_rate": "full_absorption_rate",
                            "mean_num_split_latents": "num_split_latents"}),
        "n_letters_scored": len(scored),
        "n_letters_probe_ok": n_probe_ok,
        "enough_letters": enough,
    }
    with_words = [row for row in per_letter.values() if row["num_probe_true_positives"]]
    scaled = scaled_cos_config(config, x.shape[1])
    diagnostics = {
        "l0_letter_prompts": float((acts > 0).sum(1).double().mean()) if len(acts) else None,
        "decoder_rows_rescaled": rescaled,
        **_means(with_words, {"mean_absorption_fraction_all_letters": "mean_absorption_fraction",
                              "mean_num_split_latents_all_letters": "num_split_latents"}, with_std=False),
        **_means(scored, {"mean_absorption_fraction_missed_words": "absorption_fraction_missed_words",
                          "mean_absorption_fraction_scaled_cos": "absorption_fraction_scaled_cos",
                          "share_all_latents": "share_all_latents", "share_main_latents": "share_main_latents",
                          "share_absorbers": "share_absorbers"}, with_std=False),
        "scaled_cos_thresholds": {"absorber_min_cos": scaled.absorber_min_cos,
                                  "full_absorption_min_cos": scaled.full_absorption_min_cos},
        "diagnostic_letters": f"the {len(scored)} letters with probe test F1 > {config.min_probe_f1} and a "
                              "probe-correct test word",
    }
    if groups is not None:
        diagnostics.update(_group_summary(scored, groups))
    return {**result, "diagnostics": diagnostics, "letters": per_letter, "config": asdict(config)}


def _score_words(x, acts, letters, directions, decoder_cos, main_mask, config) -> dict[str, torch.Tensor]:
    """Per probe-correct word: the official fraction and full flag, the fraction with scaled
    cosine thresholds, the projections and the absorbing latents (chunked for memory)."""
    scaled = scaled_cos_config(config, x.shape[1])
    keys = ("fraction", "full", "fraction_scaled_cos", "probe", "all_latents", "main", "absorbed")
    out: dict[str, list[torch.Tensor]] = {key: [] for key in (*keys, "absorbers", "absorber_projection")}
    for s in range(0, len(x), config.chunk_size):
        rows = slice(s, s + config.chunk_size)
        c = letters[rows]
        args = (x[rows], acts[rows], directions[c], decoder_cos[c], main_mask[c])
        parts = _word_projections(*args, config)
        out["fraction"].append(_fractions(parts, config))
        out["full"].append(_full_absorption(parts.probe, acts[rows], decoder_cos[c], main_mask[c], config))
        out["fraction_scaled_cos"].append(_fractions(_word_projections(*args, scaled), scaled))
        for key in ("probe", "all_latents", "main", "absorbed", "absorbers", "absorber_projection"):
            out[key].append(getattr(parts, key))
    n_absorbers = min(config.max_absorbers, acts.shape[1])
    empty = {"absorbers": torch.empty(0, n_absorbers, dtype=torch.long),
             "absorber_projection": torch.empty(0, n_absorbers), "full": torch.empty(0, dtype=torch.bool)}
    return {key: torch.cat(parts) if parts else empty.get(key, torch.empty(0)) for key, parts in out.items()}


def _per_letter(letters, words, missed, probing: SparseProbing, probes: LetterProbes, groups, config) -> dict:
    """One JSON-ready row per letter from the per-word results (``letters`` (m,) of the words)."""
    absorbing = words["fraction"] > 0
    rows = {}
    for c, letter in enumerate(LETTERS):
        mine = letters == c
        n_tp = int(mine.sum())
        absorbers = words["absorbers"][mine & absorbing]
        ids, counts = absorbers[absorbers >= 0].unique(return_counts=True)
        top = counts.argsort(descending=True, stable=True)[:5]
        probe_f1 = float(probes.test_f1[c])
        rows[letter] = {
            "main_latents": probing.main[c],
            "num_split_latents": len(probing.main[c]),
            "k_sparse_f1": probing.f1[:, c].tolist(),
            "probe_test_f1": probe_f1,
            "scored": bool(n_tp and probe_f1 > config.min_probe_f1),
            "num_probe_true_positives": n_tp,
            "mean_absorption_fraction": _sum_over(words["fraction"], mine, n_tp),
            "num_full_absorption": int(words["full"][mine].sum()),
            "full_absorption_rate": _sum_over(words["full"], mine, n_tp),
            "num_missed_by_main_latents": int(missed[mine].sum()),
            # summed over the missed words only, divided by all probe-correct words
            "absorption_fraction_missed_words": _sum_over(words["fraction"], mine & missed, n_tp),
            "absorption_fraction_scaled_cos": _sum_over(words["fraction_scaled_cos"], mine, n_tp),
            **{f"share_{name}": _share(words[key], words["probe"], mine)
               for name, key in (("all_latents", "all_latents"), ("main_latents", "main"), ("absorbers", "absorbed"))},
            "top_absorbers": [{"latent": int(ids[i]), "words": int(counts[i]),
                               "group": int(groups[ids[i]]) if groups is not None else None} for i in top],
            "main_latent_groups": [int(groups[j]) for j in probing.main[c]] if groups is not None else None,
            "absorber_projection_by_group": (
                _by_group(words["absorbers"][mine & absorbing], words["absorber_projection"][mine & absorbing], groups)
                if groups is not None else None),
        }
    return rows


def _sum_over(values: torch.Tensor, where: torch.Tensor, n: int) -> float | None:
    """``values[where].sum() / n``; None when ``n`` is 0."""
    return float(values[where].double().sum()) / n if n else None


def _share(part: torch.Tensor, probe: torch.Tensor, where: torch.Tensor) -> float | None:
    """The summed ``part`` over the summed probe projection ``probe`` of the words ``where``
    (a ratio of sums: words with a small projection do not dominate it); None without words."""
    total = float(probe[where].double().sum())
    return float(part[where].double().sum()) / total if bool(where.any()) and total > 0 else None


def _by_group(ids: torch.Tensor, values: torch.Tensor, groups: torch.Tensor) -> list[float]:
    """(n_groups,) summed ``values`` of the latents ``ids`` (-1: none) by their group."""
    n_groups = int(groups.max()) + 1
    keep = ids >= 0
    return torch.zeros(n_groups, dtype=torch.float64).index_add_(
        0, groups[ids[keep]], values[keep].double()).tolist()


def _group_summary(scored: list[dict], groups: torch.Tensor) -> dict[str, list[float]]:
    """Which Matryoshka group the scored letters' main latents and absorbers come from: the
    share of main latents, and of the absorbed projection, in each group."""
    n_groups = int(groups.max()) + 1
    main = torch.zeros(n_groups, dtype=torch.float64)
    absorbed = torch.zeros(n_groups, dtype=torch.float64)
    for row in scored:
        for g in row["main_latent_groups"]:
            main[g] += 1
        absorbed += torch.tensor(row["absorber_projection_by_group"], dtype=torch.float64)
    return {"group_sizes": torch.bincount(groups, minlength=n_groups).tolist(),
            "main_latents_by_group": (main / main.sum()).tolist() if main.sum() > 0 else None,
            "absorbed_projection_by_group": (absorbed / absorbed.sum()).tolist() if absorbed.sum() > 0 else None}


def _means(rows: list[dict], keys: dict[str, str], with_std: bool = True) -> dict[str, float | None]:
    """``{name: mean over rows of row[key]}`` (skipping None), and ``std_...`` (sample std) with
    ``with_std``; None where no row has a value."""
    out: dict[str, float | None] = {}
    for name, key in keys.items():
        values = [row[key] for row in rows if row[key] is not None]
        out[name] = statistics.mean(values) if values else None
        if with_std:
            std_name = name.replace("mean_", "std_", 1)
            out[std_name] = (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
    return out
