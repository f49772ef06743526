"""Residual-stream activations of a language model, collected once and reused.

``collect_activations`` tokenises a corpus into fixed-length contexts, runs the model up to
the hook point (``stop_at_layer``) and writes the activations of the kept positions (not
special tokens, not the first ``exclude_first`` positions of a context, whose norms are huge
attention sinks) into shards under a folder named by a hash of everything that determines
them. Shards are written atomically and collection resumes at the first missing shard;
``meta.json`` is written last and marks the folder complete.

``CachedActivations`` then serves shuffled batches from those shards (memory-mapped), the same
batches in the same order for every SAE trained with the same seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..files import atomic_write, write_json
from .stories import corpus_fingerprint, generate_stories
from .sources import EpochShuffledRows


class DataUnavailableError(RuntimeError):
    """The corpus cannot be read: an empty folder, a missing column, no hub access."""


@dataclass
class CorpusConfig:
    """Where the text comes from."""

    source: str = "stories"  # "stories" (generated), "text_dir" (a folder of .txt files) or "hf"
    n_documents: int = 20_000  # stories to generate, or documents to read at most
    seed: int = 0  # stories only
    path: str = ""  # text_dir: the folder; hf: the dataset name, e.g. "monology/pile-uncopyrighted"
    split: str = "train"  # hf only
    column: str = "text"  # hf only
    data_files: list[str] | None = None  # hf only: local files for the "text"/"json" loaders

    def __post_init__(self):
        if self.source not in ("stories", "text_dir", "hf"):
            raise ValueError(f"unknown corpus source {self.source!r}; use 'stories', 'text_dir' or 'hf'")
        if self.source != "stories" and not self.path:
            raise ValueError(f"a {self.source!r} corpus needs a path")


def corpus_from_spec(spec: str | None, n_documents: int = 10**9) -> CorpusConfig | None:
    """A corpus from a short string, for notebook parameters: ``None`` (keep the profile's),
    ``"hf:<dataset name>"`` (streamed from the Hugging Face hub, column "text") or the path of a
    folder of .txt files."""
    if spec is None:
        return None
    if spec.startswith("hf:"):
        return CorpusConfig(source="hf", path=spec[3:], n_documents=n_documents)
    if not Path(spec).is_dir():
        raise DataUnavailableError(f"corpus {spec!r} is neither 'hf:<dataset>' nor an existing folder of .txt files")
    return CorpusConfig(source="text_dir", path=str(Path(spec).resolve()), n_documents=n_documents)


def iter_documents(corpus: CorpusConfig) -> Iterator[str]:
    if corpus.source == "stories":
        for story in generate_stories(corpus.n_documents, corpus.seed):
            yield story.text
    elif corpus.source == "text_dir":
        folder = Path(corpus.path)
        files = sorted(folder.rglob("*.txt")) if folder.is_dir() else []
        texts = (f.read_text(errors="replace") for f in files[: corpus.n_documents])
        found = False
        for text in texts:
            if text.strip():
                found = True
                yield text
        if not found:
            raise DataUnavailableError(f"the corpus folder {folder} holds no non-empty .txt files")
    else:
        yield from _iter_hf(corpus)


def _iter_hf(corpus: CorpusConfig) -> Iterator[str]:
    try:
        import datasets

        stream = datasets.load_dataset(corpus.path, split=corpus.split, streaming=True, data_files=corpus.data_files)
        rows = iter(stream)
        first = next(rows)
    except StopIteration:
        raise DataUnavailableError(f"the dataset {corpus.path!r} ({corpus.split}) is empty") from None
    except Exception as error:
        raise DataUnavailableError(
            f"the dataset {corpus.path!r} could not be read ({type(error).__name__}: {error}); "
            "it needs hub access, or point the corpus at local files"
        ) from error
    if corpus.column not in first:
        raise DataUnavailableError(f"the dataset {corpus.path!r} has no column {corpus.column!r}; it has {sorted(first)}")
    yield first[corpus.column]
    for i, row in enumerate(rows, start=1):
        if i >= corpus.n_documents:
            break
        yield row[corpus.column]


def iter_contexts(documents, tokenizer, context_size: int, prepend_bos: bool = False) -> Iterator[torch.Tensor]:
    """Pack tokenised documents, each followed by the end-of-sequence token, into (context_size,)
    LongTensors; with ``prepend_bos`` each context starts with the BOS token."""
    body = context_size - int(prepend_bos)
    separator = tokenizer.eos_token_id
    buffer: list[int] = []
    for text in documents:
        buffer += tokenizer(text, add_special_tokens=False)["input_ids"] + [separator]
        while len(buffer) >= body:
            chunk, buffer = buffer[:body], buffer[body:]
            yield torch.tensor(([tokenizer.bos_token_id] if prepend_bos else []) + chunk)


def keep_mask(tokens: torch.Tensor, special_ids: list[int], exclude_first: int) -> torch.Tensor:
    """(batch, ctx) bool: the positions whose activations are used."""
    keep = ~torch.isin(tokens, torch.tensor(special_ids, dtype=tokens.dtype))
    keep[:, :exclude_first] = False
    return keep


@dataclass
class ActivationConfig:
    """What to collect. Two configs that are equal give the same activations."""

    model_name: str
    hook_name: str
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    context_size: int = 256
    n_tokens: int = 1_000_000  # at least this many (whole shards)
    exclude_first: int = 1
    prepend_bos: bool = False
    shard_contexts: int = 256
    batch_contexts: int = 8
    dtype: str = "float16"

    def key(self) -> str:
        """The cache folder's name: a hash of this config and, for stories, of the generator."""
        content = asdict(self)
        if self.corpus.source == "stories":
            content["corpus_fingerprint"] = corpus_fingerprint(self.corpus.n_documents, self.corpus.seed)
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def collect_activations(model, config: ActivationConfig, cache_root: str | Path, progress: bool = True) -> Path:
    """Collect (or finish collecting) the activations of ``config``; returns the cache folder."""
    from .models import check_hook_name

    layer = check_hook_name(model, config.hook_name)
    folder = Path(cache_root) / config.key()
    if (folder / "meta.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", asdict(config))
    tokenizer = model.tokenizer
    special = sorted(set(tokenizer.all_special_ids))
    contexts = iter_contexts(iter_documents(config.corpus), tokenizer, config.context_size, config.prepend_bos)
    np_dtype = np.dtype(config.dtype)

    shards, total = [], 0
    bar = tqdm(total=config.n_tokens, desc="activations", unit="tok", disable=not progress, mininterval=2.0)
    with bar:
        while total < config.n_tokens:
            index = len(shards)
            batch = [c for _, c in zip(range(config.shard_contexts), contexts)]
            if not batch:
                break  # the corpus ran out
            tokens = torch.stack(batch)
            path = folder / f"shard_{index:05d}.npy"
            if not path.is_file():  # done in an earlier, interrupted call otherwise
                acts, kept_tokens = _run_shard(model, tokens, config, layer, special)
                if not np.isfinite(acts.astype(np_dtype)).all():
                    raise ValueError(f"activations overflow {config.dtype} in shard {index}; collect in float32")
                atomic_write(folder / f"tokens_{index:05d}.npy", lambda f: np.save(f, kept_tokens))
                atomic_write(path, lambda f: np.save(f, acts.astype(np_dtype)))
            n = int(np.load(path, mmap_mode="r").shape[0])
            shards.append({"file": path.name, "tokens_file": f"tokens_{index:05d}.npy", "n_tokens": n})
            total += n
            bar.update(n)
    if total == 0:
        raise DataUnavailableError("the corpus gave no tokens to collect")
    meta = {
        "config": asdict(config),
        "d_model": model.cfg.d_model,
        "n_tokens": total,
        "shards": shards,
    }
    write_json(folder / "meta.json", meta)
    return folder


@torch.no_grad()
def _run_shard(model, tokens: torch.Tensor, config: ActivationConfig, layer: int, special: list[int]):
    """Activations (n, d_model) float32 and token ids (n,) int32 of the kept positions."""
    keep = keep_mask(tokens, special, config.exclude_first)
    device = model.cfg.device
    acts = []
    for start in range(0, tokens.shape[0], config.batch_contexts):
        chunk = tokens[start : start + config.batch_contexts].to(device)
        _, cache = model.run_with_cache(chunk, names_filter=config.hook_name, stop_at_layer=layer + 1)
        acts.append(cache[config.hook_name].float().cpu()[keep[start : start + config.batch_contexts]])
    return torch.cat(acts).numpy(), tokens[keep].to(torch.int32).numpy()


class CachedActivations(EpochShuffledRows):
    """Shuffled batches from a collected cache: each epoch visits every token once, in an order
    fixed by ``seed`` and the epoch. Resumable: ``state_dict`` is (epoch, position)."""

    def __init__(self, folder: str | Path, batch_size: int, seed: int = 0):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a complete activation cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        self.shards = [np.load(self.folder / s["file"], mmap_mode="r") for s in self.meta["shards"]]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        n_tokens = int(self.offsets[-1])
        if batch_size > n_tokens:
            raise ValueError(f"batch size {batch_size} exceeds the {n_tokens} cached tokens")
        self.seed = seed
        super().__init__(n_tokens, batch_size)

    @property
    def n_tokens(self) -> int:
        return self.n_rows

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    def check(self, d_in: int, model_name: str | None = None, hook_name: str | None = None) -> None:
        """Raise if the cache was collected for another width, model or hook point."""
        cfg = self.meta["config"]
        if self.d_model != d_in:
            raise ValueError(f"cached activations in {self.folder} have width {self.d_model}, the SAEs expect {d_in}")
        for name, want in (("model_name", model_name), ("hook_name", hook_name)):
            if want is not None and cfg[name] != want:
                raise ValueError(f"cached activations in {self.folder} come from {name}={cfg[name]!r}, not {want!r}")

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_tokens)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), d_model) float32 activations of the given global token indices."""
        out = np.empty((len(indices), self.d_model), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = indices[where] - self.offsets[shard]
            order = np.argsort(local)  # sorted reads are kinder to the page cache
            out[where[order]] = self.shards[shard][local[order]]
        return torch.from_numpy(out)

    def describe(self) -> dict[str, Any]:
        return {"kind": "activations", "cache": self.folder.name, "n_tokens": self.n_tokens,
                "batch_size": self.batch_size, "seed": self.seed}


class LiveActivations:
    """Activations computed on the fly, for runs too long to cache (the paper's 500M tokens).

    Contexts are run through the model in order; their kept activations go into a buffer of
    ``buffer_tokens`` (the paper used 250k), which is refilled when half empty and then shuffled;
    batches are served from it. ``state_dict`` records how many contexts were used: a resumed
    stream continues on the next unseen contexts with a fresh buffer (it does not replay the
    buffered tokens, so it is not bit-identical to an uninterrupted run).
    """

    def __init__(self, model, config: ActivationConfig, batch_size: int, buffer_tokens: int = 250_000, seed: int = 0):
        from .models import check_hook_name

        if buffer_tokens < 2 * batch_size:
            raise ValueError(f"buffer_tokens={buffer_tokens} must hold at least two batches of {batch_size}")
        self.model, self.config = model, config
        self.layer = check_hook_name(model, config.hook_name)
        self.batch_size, self.buffer_tokens, self.seed = batch_size, buffer_tokens, seed
        self.special = sorted(set(model.tokenizer.all_special_ids))
        self.generator = torch.Generator().manual_seed(seed)
        self._restart(contexts_used=0)

    def _restart(self, contexts_used: int) -> None:
        docs = iter_documents(self.config.corpus)
        self.contexts = iter_contexts(docs, self.model.tokenizer, self.config.context_size, self.config.prepend_bos)
        for _ in range(contexts_used):  # fast-forward: tokenising only
            next(self.contexts)
        self.contexts_used = contexts_used
        self.buffer = torch.empty(0, self.model.cfg.d_model)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    def check(self, d_in: int, model_name: str | None = None, hook_name: str | None = None) -> None:
        if self.d_model != d_in:
            raise ValueError(f"the model's activations have width {self.d_model}, the SAEs expect {d_in}")
        if hook_name is not None and hook_name != self.config.hook_name:
            raise ValueError(f"the stream reads {self.config.hook_name!r}, not {hook_name!r}")

    def _refill(self) -> None:
        fresh = [self.buffer]
        have = len(self.buffer)
        while have < self.buffer_tokens:
            batch = [c for _, c in zip(range(self.config.batch_contexts), self.contexts)]
            if not batch:
                if have < self.batch_size:
                    raise DataUnavailableError(f"the corpus ran out after {self.contexts_used} contexts")
                break
            self.contexts_used += len(batch)
            acts, _ = _run_shard(self.model, torch.stack(batch), self.config, self.layer, self.special)
            fresh.append(torch.from_numpy(acts))
            have += len(acts)
        self.buffer = torch.cat(fresh)
        self.buffer = self.buffer[torch.randperm(len(self.buffer), generator=self.generator)]

    def next_batch(self) -> torch.Tensor:
        if len(self.buffer) < max(self.buffer_tokens // 2, self.batch_size):
            self._refill()
        batch, self.buffer = self.buffer[: self.batch_size], self.buffer[self.batch_size :]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"contexts_used": self.contexts_used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restart(int(state["contexts_used"]))

    def describe(self) -> dict[str, Any]:
        return {"kind": "live activations", "config": asdict(self.config), "buffer_tokens": self.buffer_tokens,
                "batch_size": self.batch_size, "seed": self.seed}
