import re
from collections import Counter

from msae.data import story_vocab as V
from msae.data.stories import corpus_fingerprint, generate_stories


def test_same_seed_same_corpus_other_seed_other_corpus(seed):
    a, b = generate_stories(50, seed), generate_stories(50, seed)
    assert [s.text for s in a] == [s.text for s in b] and [s.labels for s in a] == [s.labels for s in b]
    assert [s.text for s in generate_stories(50, seed + 1)] != [s.text for s in a]
    assert corpus_fingerprint(50, seed) == corpus_fingerprint(50, seed) != corpus_fingerprint(51, seed)


def test_spans_point_at_the_words_their_tags_describe(seed):
    female_words = set(V.FEMALE_NAMES) | {f for f, _ in V.ROLES} | set(V.PRONOUNS["female"]) | {w.capitalize() for w in V.PRONOUNS["female"]}
    male_words = set(V.MALE_NAMES) | {m for _, m in V.ROLES} | set(V.PRONOUNS["male"]) | {w.capitalize() for w in V.PRONOUNS["male"]}
    animal_class = {a: c for c, animals in V.ANIMALS.items() for a in animals}
    for story in generate_stories(300, seed):
        for start, end, tags in story.spans:
            word = story.text[start:end]
            assert word and word == word.strip()
            if "female" in tags:
                assert word in female_words, word
            if "male" in tags:
                assert word in male_words, word
            if "animal" in tags:
                assert f"animal:{animal_class[word]}" in tags
            if "colour" in tags:
                assert f"colour:{word}" in tags
        assert story.labels["name"] in story.tagged_words(f"name:{story.labels['name']}") or not story.tagged_words("name")
        gender = story.labels["gender"]
        assert story.labels["name"] in (V.FEMALE_NAMES if gender == "female" else V.MALE_NAMES)
        sentiment = story.labels["sentiment"]
        other = "sad" if sentiment == "happy" else "happy"
        assert story.tagged_words(f"sentiment:{sentiment}") and not story.tagged_words(f"sentiment:{other}")


def test_hero_pronouns_match_the_heros_gender(seed):
    for story in generate_stories(300, seed):
        pronouns = [tags for _, _, tags in story.spans if "pronoun" in tags]
        assert all(story.labels["gender"] in tags for tags in pronouns)


def test_labels_are_balanced_and_varied(seed):
    stories = generate_stories(4000, seed)
    gender = Counter(s.labels["gender"] for s in stories)
    sentiment = Counter(s.labels["sentiment"] for s in stories)
    assert abs(gender["female"] - 2000) < 200 and abs(sentiment["happy"] - 2000) < 200  # 6+ sigma
    assert len({s.text for s in stories}) == 4000
    words = {w.lower() for s in stories for w in re.findall(r"[A-Za-z'-]+", s.text)}
    assert len(words) > 1000


def test_articles_agree_with_the_next_word(seed):
    for story in generate_stories(500, seed):
        assert not re.search(r"\b[Aa] [aeiouAEIOU]", story.text), story.text
        assert not re.search(r"\b[Aa]n [^aeiouAEIOU\s]", story.text), story.text
