"""Natural English text under free licences, fetched once from Debian's package archive and cached.

The generated story corpus (:mod:`msae.data.stories`) has a small templated vocabulary; this
module gives the language-model experiments real English instead, without a Hugging Face hub
(the README says why these sources and what they measured):

- ``web``: the World English Bible with the Deuterocanon (``sword-text-web``), public domain;
  one document per chapter.
- ``austen``: Jane Austen's six novels (``r-cran-janeaustenr``; the novels are public domain, the
  R package MIT); one document per chapter.
- ``jargon``: the Jargon File 4.4.7 (``jargon-text``), public domain; blocks of entries.
- ``devil``: Ambrose Bierce's *The Devil's Dictionary* (``dict-devil``), public domain; blocks of
  entries.
- ``wordnet``: WordNet 3.0's glosses (``wordnet-base``), under the permissive WordNet licence;
  blocks of "word, synonym: definition; "example"" lines. About half of the default mix's
  tokens, and most of its vocabulary.
- ``kjv``: the King James Version (``sword-text-kjv``): public domain except in the UK (Crown
  letters patent), so it is not in :data:`DEFAULT_SOURCES`.

Each source is one ``.deb`` file, downloaded with ``urllib`` (no apt, no root), checked against
the sha256 pinned below and cached under ``cache_dir``; after that no network is needed. A
``.deb`` is an ``ar`` archive whose ``data.tar.*`` member holds the files: both are read with
the standard library here (an ``xz``, ``gz`` or ``bz2`` payload; ``zst`` only where a zstd
module is importable).

:func:`english_documents` gives the documents of the chosen sources, split deterministically
into a training and a held-out part, and shuffled with a seed so that any prefix mixes the
sources.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import html
import io
import json
import lzma
import os
import re
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .activations import DataUnavailableError

# Debian's pool keeps a file while any suite holds it; archive.debian.org keeps it afterwards.
MIRRORS = ("https://deb.debian.org/debian/", "https://archive.debian.org/debian/")
DOWNLOAD_TIMEOUT_S = 60
# raise when the documents a source gives change (its splitting or cleaning): activation caches
# are keyed by it (:meth:`msae.data.activations.ActivationConfig.key`)
DOCUMENTS_VERSION = 1
# every 20th document (by a hash of its text) is held out for evaluation
HELD_OUT_EVERY = 20
# the entries of the dictionaries are grouped into documents of at least this many characters
BLOCK_CHARS = 4000


class ChecksumMismatchError(DataUnavailableError):
    """A downloaded or cached package does not have the pinned sha256."""


@dataclass(frozen=True)
class DebianText:
    """One source of text: a ``.deb`` in Debian's pool and how to turn its files into documents.

    Attributes:
        name: the short name used in :func:`english_documents`, e.g. "web".
        pool_path: the file's path under a mirror's root, e.g. "pool/main/s/sword-text-web/...deb".
        sha256: the pinned checksum of that file.
        licence: the licence of the text, as its copyright file states it.
        members: the paths (prefixes) inside the package's data archive that hold the text.
        documents: files (path -> bytes, those under ``members``) -> documents.
    """

    name: str
    pool_path: str
    sha256: str
    licence: str
    members: tuple[str, ...]
    documents: Callable[[dict[str, bytes]], list[str]]

    @property
    def file_name(self) -> str:
        return self.pool_path.rsplit("/", 1)[-1]


# --- reading a .deb ------------------------------------------------------------------------------

def read_ar(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (the common format a ``.deb`` uses): name -> content."""
    if not data.startswith(b"!<arch>\n"):
        raise DataUnavailableError("not an ar archive (a .deb starts with '!<arch>')")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise DataUnavailableError(f"corrupt ar header at byte {pos}")
        name = header[:16].decode("ascii").strip().rstrip("/")  # GNU ar ends names with '/'
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
    return members


def _decompress(name: str, payload: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(payload)
    if name.endswith(".gz"):
        return gzip.decompress(payload)
    if name.endswith(".bz2"):
        return bz2.decompress(payload)
    if name.endswith(".zst"):
        try:  # Python 3.14's standard library, else the zstandard package
            from compression import zstd  # type: ignore[import-not-found]

            return zstd.decompress(payload)
        except ImportError:
            pass
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise DataUnavailableError(f"{name} is zstd-compressed: install the 'zstandard' package") from None
        return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    if name.endswith(".tar"):
        return payload
    raise DataUnavailableError(f"unknown compression of {name}")


def deb_files(deb: bytes, prefixes: Sequence[str]) -> dict[str, bytes]:
    """The regular files under ``prefixes`` (paths without the leading "./") in a ``.deb``'s
    data archive: path -> content."""
    members = read_ar(deb)
    data_names = [n for n in members if n.startswith("data.tar")]
    if not data_names:
        raise DataUnavailableError(f"the package has no data.tar member (it has {sorted(members)})")
    archive = _decompress(data_names[0], members[data_names[0]])
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for info in tar:
            path = info.name.removeprefix("./")
            if info.isfile() and any(path.startswith(p) for p in prefixes):
                files[path] = tar.extractfile(info).read()
    return files


# --- fetching ------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$MSAE_DATA_DIR`` if set, else ``~/.cache/msae``: the downloads go in its ``english/``."""
    return Path(os.environ.get("MSAE_DATA_DIR") or Path.home() / ".cache" / "msae")


def fetch_package(source: DebianText, cache_dir: str | Path, mirrors: Sequence[str] = MIRRORS) -> bytes:
    """The bytes of ``source``'s ``.deb``: from ``cache_dir/english/`` if there and intact, else
    downloaded from the first mirror that has it, checked, and cached (written atomically)."""
    path = Path(cache_dir) / "english" / source.file_name
    if path.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == source.sha256:
            return data
        # a file left by another version of this module, or damaged: fetch it again
    errors = []
    for mirror in mirrors:
        url = mirror + source.pool_path
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{url}: {error}")
            continue
        check_sha256(data, source)
        atomic_write(path, lambda f, content=data: f.write(content))
        return data
    raise DataUnavailableError(
        f"the {source.name!r} text ({source.file_name}) is not cached in {path.parent} and could not be "
        f"downloaded ({'; '.join(errors)}); run once with network access, or copy the file there")


def check_sha256(data: bytes, source: DebianText) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise ChecksumMismatchError(f"{source.file_name} has sha256 {digest}, expected {source.sha256}: "
                                    "the download is damaged or the archive changed")


# --- splitting into documents -------------------------------------------------------------------

_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.S)
_PARAGRAPH_END = re.compile(r"<div eID=\"[^\"]*\" type=\"x-p\"/>|<lb\b[^>]*/>|<l eID[^>]*/>")
# two word elements with nothing between them (once a footnote is gone, or before a word the
# translators added): "<w>God</w><transChange>is</transChange>" must not read "Godis"
_WORD_JOIN = re.compile(r"(</w>|</transChange>)(?=<(?:w|transChange)\b)")
_TAG = re.compile(r"<[^>]*>")
_CHAPTER = re.compile(r"<chapter\b[^>]*\bsID=\"[^\"]*\"[^>]*/>")


def osis_text(markup: str) -> str:
    """Plain text of OSIS markup: footnotes dropped, paragraph ends as newlines, tags removed."""
    # a footnote may sit between two words: "<w>God</w><note>...</note><w>created</w>"
    markup = _WORD_JOIN.sub(r"\1 ", _NOTE.sub("", markup))
    markup = _TITLE.sub(lambda m: "\n" + m.group(1) + "\n", markup)
    markup = _PARAGRAPH_END.sub("\n", markup)
    text = html.unescape(_TAG.sub("", markup))
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def sword_chapters(files: dict[str, bytes]) -> list[str]:
    """Documents (one per chapter) of a SWORD zText module: ``*.bzs`` lists its blocks (offset,
    compressed size, size: three little-endian uint32 each), ``*.bzz`` holds them zlib-compressed;
    a block is a book of OSIS markup, cut at its ``<chapter sID=.../>`` milestones."""
    chapters = []
    for testament in ("ot", "nt"):
        index = next((v for k, v in files.items() if k.endswith(f"/{testament}.bzs")), None)
        blocks = next((v for k, v in files.items() if k.endswith(f"/{testament}.bzz")), None)
        if index is None or blocks is None:
            raise DataUnavailableError(f"the SWORD module has no {testament}.bzs/{testament}.bzz")
        for i in range(len(index) // 12):
            offset, size, _ = struct.unpack_from("<III", index, 12 * i)
            book = zlib.decompress(blocks[offset : offset + size]).decode("utf-8")
            pieces = _CHAPTER.split(book)
            for piece in pieces[1:]:  # before the first chapter: a book's title, or a preface
                text = osis_text(piece)
                if len(text) > 200:
                    chapters.append(text)
    return chapters


def r_strings(serialized: bytes) -> list[str]:
    """The elements of an R character vector serialized in R's XDR format (version 2 or 3)."""
    if not serialized.startswith(b"X\n"):
        raise DataUnavailableError("not an R object in XDR format")
    version, = struct.unpack_from(">i", serialized, 2)
    pos = 14 + (4 + struct.unpack_from(">i", serialized, 14)[0] if version == 3 else 0)  # v3: + native encoding
    flags, length = struct.unpack_from(">ii", serialized, pos)
    if flags & 0xFF != 16:  # STRSXP
        raise DataUnavailableError(f"expected an R character vector, found SEXP type {flags & 0xFF}")
    pos += 8
    strings = []
    for _ in range(length):
        _, n = struct.unpack_from(">ii", serialized, pos)
        pos += 8
        if n == -1:  # NA_character_
            strings.append("")
            continue
        strings.append(serialized[pos : pos + n].decode("utf-8", errors="replace"))
        pos += n
    return strings


def r_lazyload_objects(rdb: bytes) -> list[bytes]:
    """The serialized objects of an R lazy-load database (``*.rdb``): each a big-endian uint32
    length and a zlib stream."""
    objects, pos = [], 0
    while pos < len(rdb):
        inflater = zlib.decompressobj()
        objects.append(inflater.decompress(rdb[pos + 4 :]))
        pos = len(rdb) - len(inflater.unused_data)
    return objects


_AUSTEN_CHAPTER = re.compile(r"^(chapter|chap\.)\s+([0-9]+|[ivxlc]+)\b", re.I)


def austen_chapters(files: dict[str, bytes]) -> list[str]:
    """Documents (one per chapter) of the six novels in janeaustenr's data: one character vector
    of lines per novel, paragraphs separated by empty lines, chapters starting "CHAPTER n"/"Chapter n"."""
    rdb = next((v for k, v in files.items() if k.endswith("data/Rdata.rdb")), None)
    if rdb is None:
        raise DataUnavailableError("janeaustenr has no data/Rdata.rdb")
    chapters = []
    for novel in r_lazyload_objects(rdb):
        current: list[str] = []
        for line in r_strings(novel) + ["CHAPTER 0"]:  # the sentinel closes the last chapter
            if _AUSTEN_CHAPTER.match(line.strip()):
                text = unwrap("\n".join(current))
                if len(text) > 200:  # not the title page before chapter 1
                    chapters.append(text)
                current = []
            else:
                current.append(line)
    return chapters


def unwrap(text: str) -> str:
    """Hard-wrapped text as one line per paragraph (paragraphs end at empty lines)."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return "\n".join(p for p in paragraphs if p)


def paragraph_blocks(text: str, block_chars: int = BLOCK_CHARS) -> list[str]:
    """Hard-wrapped text cut at empty lines into paragraphs, unwrapped, and grouped in order into
    documents of at least ``block_chars`` characters; table rows (box-drawing characters) dropped."""
    blocks, current, size = [], [], 0
    for paragraph in re.split(r"\n\s*\n", text):
        if re.search("[\u2500-\u257f]", paragraph):
            continue
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        current.append(paragraph)
        size += len(paragraph)
        if size >= block_chars:
            blocks.append("\n".join(current))
            current, size = [], 0
    if current:
        blocks.append("\n".join(current))
    return blocks


def jargon_blocks(files: dict[str, bytes]) -> list[str]:
    text = gzip.decompress(next(v for k, v in files.items() if k.endswith("jargon.txt.gz"))).decode("utf-8")
    return paragraph_blocks(text)


def devil_blocks(files: dict[str, bytes]) -> list[str]:
    text = gzip.decompress(next(v for k, v in files.items() if k.endswith("devil.dict.dz"))).decode("latin-1")
    first_entry = re.search(r"\n\n[A-Z][A-Z' -]*, [a-z.]+ ", text)  # after dictd's header entries and the preface
    return paragraph_blocks(text[first_entry.start() if first_entry else 0 :])


def wordnet_blocks(files: dict[str, bytes]) -> list[str]:
    """WordNet's glosses, one line per synset ("fold, folding: the act of folding; ..."), grouped
    in the database's order (by part of speech and lexicographer file, so neighbours share a
    topic) into documents. A ``data.*`` line is "offset lex_filenum pos n_words(hex) word lex_id
    ... | gloss"; lines starting with spaces are the licence header."""
    blocks = []
    for part in ("noun", "verb", "adj", "adv"):
        data = next((v for k, v in files.items() if k.endswith(f"/data.{part}")), None)
        if data is None:
            raise DataUnavailableError(f"WordNet has no data.{part}")
        lines = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue
            fields, gloss = line.split(" | ", 1)
            fields = fields.split()
            n_words = int(fields[3], 16)
            words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
            lines.append(f"{', '.join(words)}: {gloss.strip()}")
        blocks += paragraph_blocks("\n\n".join(lines))
    return blocks


SOURCES: dict[str, DebianText] = {
    source.name: source
    for source in (
        DebianText(
            "web", "pool/main/s/sword-text-web/sword-text-web_522.0-1_all.deb",
            "b2029a802c44f1d6103de45e9ef5c64a9bd66466776e593e386b5ea84bfc110f",
            "public domain", ("usr/share/sword/modules/",), sword_chapters),
        DebianText(
            "austen", "pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            "public domain (novels, 1811-1818); R package MIT", ("usr/lib/R/site-library/janeaustenr/data/",),
            austen_chapters),
        DebianText(
            "jargon", "pool/main/j/jargon-text/jargon-text_4.4.7-4.1_all.deb",
            "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
            "public domain", ("usr/share/doc/jargon-text/jargon.txt.gz",), jargon_blocks),
        DebianText(
            "devil", "pool/main/d/dict-devil/dict-devil_1.0-13.1_all.deb",
            "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154",
            "public domain", ("usr/share/dictd/devil.dict.dz",), devil_blocks),
        DebianText(
            "wordnet", "pool/main/w/wordnet/wordnet-base_3.0-39_all.deb",
            "f4f96d4d5d19061916c66cbb889a0119e6a46f9655051f5fd42b7317e46ce4db",
            "WordNet 3.0 licence (permissive, keep the notice)", ("usr/share/wordnet/data.",), wordnet_blocks),
        DebianText(
            "kjv", "pool/main/s/sword-text-kjv/sword-text-kjv_22.29-1_all.deb",
            "abaed17486a0e3d2895a932c9cd7fff2a3a2bd5dc84d37518aa272b2afbfa433",
            "public domain outside the UK (Crown letters patent in the UK)", ("usr/share/sword/modules/",),
            sword_chapters),
    )
}
DEFAULT_SOURCES = ("web", "austen", "jargon", "devil", "wordnet")


def english_fingerprint(sources: Sequence[str] | None = None) -> str:
    """A short hash of what fixes the documents: the pinned packages and :data:`DOCUMENTS_VERSION`;
    ``sources`` None: :data:`DEFAULT_SOURCES`."""
    sources = DEFAULT_SOURCES if sources is None else sources
    text = ",".join([str(DOCUMENTS_VERSION)] + [SOURCES[name].sha256 for name in sources])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def source_documents(name: str, cache_dir: str | Path, mirrors: Sequence[str] = MIRRORS) -> list[str]:
    """All documents of one source, in the order of the text. Splitting a package takes seconds
    (the Bible's markup most), and every notebook reads the held-out split again: the documents
    are kept beside the package, in a file named by its checksum and :data:`DOCUMENTS_VERSION`."""
    if name not in SOURCES:
        raise ValueError(f"unknown English source {name!r}; choose from {sorted(SOURCES)}")
    source = SOURCES[name]
    split = Path(cache_dir) / "english" / f"{source.name}-{source.sha256[:12]}-documents-v{DOCUMENTS_VERSION}.json"
    if split.is_file():
        try:
            return json.loads(split.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # damaged: split the package again
            pass
    documents = source.documents(deb_files(fetch_package(source, cache_dir, mirrors), source.members))
    atomic_write(split, lambda f: f.write(json.dumps(documents).encode("utf-8")))
    return documents


def is_held_out(document: str) -> bool:
    """Whether a document belongs to the held-out part: fixed by its text, not by its position,
    so adding a source does not move documents between the parts."""
    return int(hashlib.sha256(document.encode()).hexdigest()[:8], 16) % HELD_OUT_EVERY == 0


def english_documents(
    cache_dir: str | Path | None = None, split: str = "train", seed: int = 0,
    sources: Sequence[str] | None = None, mirrors: Sequence[str] = MIRRORS,
) -> list[str]:
    """The documents of ``sources`` (None: :data:`DEFAULT_SOURCES`) in ``split`` ("train": 19 in
    20, "test": the rest), in an order shuffled by ``seed``; ``cache_dir`` None:
    :func:`default_cache_dir`."""
    sources = DEFAULT_SOURCES if sources is None else sources
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    documents = [d for name in sources for d in source_documents(name, cache_dir, mirrors)
                 if is_held_out(d) == (split == "test")]
    order = np.random.default_rng(seed).permutation(len(documents))
    return [documents[i] for i in order]
