"""A generated corpus of short, simple stories with labelled concepts (the TinyStories stand-in).

Each story has a hero (a gender, a name, a role noun, a profession), a friend, an animal of some
class, a place of some kind, a coloured object and a happy or sad ending. Sentences are drawn
from many templates in a random order, so an SAE cannot just memorise a few frames. Every story
keeps its labels (``Story.labels``) and, for every labelled word, a character span with its
concept tags (``Story.spans``), so labels can be carried to tokens.

Concept tags on spans: ``female``/``male`` (names, pronouns, role nouns), ``name``,
``name:<Name>``, ``pronoun``, ``role``, ``profession``, ``profession:<p>``, ``animal``,
``animal:<class>``, ``place``, ``place:<kind>``, ``colour``, ``colour:<c>``, ``object``,
``sentiment:happy``/``sentiment:sad``.

The same seed gives the same corpus on any machine (Python's ``random.Random``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from . import story_vocab as V

_FIELD = re.compile(r"\{(\w+)\}")


@dataclass
class Story:
    """One generated story with its labels.

    Attributes:
        text: the story.
        labels: what was drawn for it: ``gender``, ``name``, ``profession``, ``friend_gender``,
            ``friend_name``, ``animal_class``, ``animal``, ``place_kind``, ``place``, ``colour``,
            ``object`` and ``sentiment`` ("happy" or "sad").
        spans: (start, end, tags) for every labelled word: its character span in ``text`` and
            its concept tags (see the module docstring), sorted by start.
    """

    text: str
    labels: dict[str, Any]
    spans: list[tuple[int, int, tuple[str, ...]]] = field(default_factory=list)

    def tagged_words(self, tag: str) -> list[str]:
        """The words of the story that carry ``tag``."""
        return [self.text[a:b] for a, b, tags in self.spans if tag in tags]


# Sentence templates. Fields are filled per story; see _fields for what each one means.
INTROS = [
    "Once upon a time, there was a {adj} {role} named {Name}.",
    "{Name} was a {adj} {role} who lived near the {place}.",
    "There once was a {role} called {Name}.",
    "In a small town, a {adj} {role} named {Name} lived with {poss} family.",
    "{Time}, a {role} named {Name} woke up early.",
    "Long ago, {Name} the {role} lived in a house by the {place}.",
    "This is a story about a {adj} {role}. {Subj_cap} was called {Name}.",
    "Meet {Name}. {Subj_cap} is a {adj} {role} who loves the {place}.",
]
JOB = [
    "{Subj_cap} worked as a {profession}.",
    "{Name} was a {profession}, and {subj} loved {poss} job.",
    "Every morning, {Name} went to work as a {profession}.",
    "{Name} wanted to be the best {profession} in town.",
    "As a {profession}, {Name} was always busy.",
    "{Poss_cap} job was to be a {profession}, and {subj} was good at it.",
]
MIDDLE = [
    "{Time}, {Name} went to the {place}.",
    "At the {place}, {name} {found} a {colour} {object}.",
    "{Subj_cap} had a {obj_adj} {colour} {object} that {subj} loved very much.",
    "A {animal_adj} {animal} came up to {name}.",
    "The {animal} wanted to play with the {colour} {object}.",
    "{Name} met {poss} friend {Friend} at the {place}.",
    "{Friend} said, \"Look at that {animal}!\"",
    "The weather was {weather}, so {name} took the {colour} {object}.",
    "{Name} and {Friend} {played} near the {place}.",
    "{Subj_cap} gave the {animal} some {food}.",
    "\"What a {obj_adj} {object}!\" said {Friend}.",
    "{Name} asked the {profession2} for help.",
    "{Friend} was a {profession2} who knew a lot about {animal}s.",
    "The {animal} lived at the {place} with its family.",
    "{Name} packed some {food} and a {colour} {object} in a bag.",
    "On the way, {subj} {found} a little {animal}.",
    "{Subj_cap} showed {Friend} {poss} {colour} {object}.",
    "They sat under a tree and ate {food}.",
    "The {scenery_adj} {scenery} {scenery_verb} above the {place}.",
    "{Name} looked up at the {scenery_adj} {scenery}.",
    "Near the {place}, the {scenery} {scenery_verb} in the wind.",
    "{Friend} liked {colour} things, so {name} shared the {object}.",
    "\"Can I hold your {object}?\" asked the {animal_adj} {animal}.",
    "{Name} thought about {poss} work as a {profession}.",
    "{Subj_cap} drew a picture of a {animal} and a {colour} {object}.",
    "{Name} counted {number} {animal}s by the {place}.",
    "The {animal} and {name} {played} all morning.",
    "{Friend} brought {food} for everyone.",
    "{Name} {verb_object} the {colour} {object} {adverb}.",
    "{Adverb_cap}, {subj} {verb_object} the {object}.",
    "The {animal} {verb_object} the {object} {adverb}.",
    "{Friend} {verb_object} the {object} and smiled.",
]
PROBLEM_INTROS = ["But then, {problem}.", "Suddenly, {problem}.", "Oh no! {Problem_cap}.", "Later, {problem}."]
REACTIONS = {
    "happy": ["{Name} did not give up.", "{Subj_cap} had a clever idea.", "{Friend} came to help right away."],
    "sad": ["{Name} did not know what to do.", "{Subj_cap} looked everywhere, but it was no use.",
            "{Friend} was too far away to help."],
}


class StoryGenerator:
    """Draws stories from a seeded ``random.Random``; ``generate(n)`` gives ``n`` of them."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def character(self, gender: Literal["female", "male"] | None = None) -> dict[str, str]:
        """A character of ``gender`` (None: drawn): gender, name, role noun and profession."""
        rng = self.rng
        gender = gender or rng.choice(["female", "male"])
        names = V.FEMALE_NAMES if gender == "female" else V.MALE_NAMES
        role = rng.choice(V.ROLES)[0 if gender == "female" else 1]
        return {"gender": gender, "name": rng.choice(names), "role": role, "profession": rng.choice(V.PROFESSIONS)}

    def story(self) -> Story:
        rng = self.rng
        hero = self.character()
        friend = self.character()
        while friend["name"] == hero["name"]:
            friend = self.character()
        animal_class = rng.choice(sorted(V.ANIMALS))
        place_kind = rng.choice(sorted(V.PLACES))
        labels = {
            "gender": hero["gender"],
            "name": hero["name"],
            "profession": hero["profession"],
            "friend_gender": friend["gender"],
            "friend_name": friend["name"],
            "animal_class": animal_class,
            "animal": rng.choice(V.ANIMALS[animal_class]),
            "place_kind": place_kind,
            "place": rng.choice(V.PLACES[place_kind]),
            "colour": rng.choice(V.COLOURS),
            "object": rng.choice(V.OBJECTS),
            "sentiment": rng.choice(["happy", "sad"]),
        }
        fields = self._fields(hero, friend, labels)

        sentences = [rng.choice(INTROS)]
        if rng.random() < 0.8:
            sentences.append(rng.choice(JOB))
        sentences += rng.sample(MIDDLE, rng.randint(2, 5))
        if rng.random() < 0.7:
            sentences.append(rng.choice(PROBLEM_INTROS))
            sentences.append(rng.choice(REACTIONS[labels["sentiment"]]))
        endings = V.HAPPY_ENDINGS if labels["sentiment"] == "happy" else V.SAD_ENDINGS
        sentences += rng.sample(endings, 2)
        feeling = V.HAPPY_WORDS if labels["sentiment"] == "happy" else V.SAD_WORDS
        sentences.append(f"{{Name}} was {rng.choice(feeling)}." if rng.random() < 0.5 else "{Subj_cap} felt " + rng.choice(feeling) + ".")

        writer = _Writer()
        for i, sentence in enumerate(sentences):
            if i:
                writer.add(" ")
            writer.fill(sentence, fields, rng)
        # emotion words of the ending carry the story's sentiment
        for word in (V.HAPPY_WORDS if labels["sentiment"] == "happy" else V.SAD_WORDS):
            for match in re.finditer(rf"\b{word}\b", writer.text):
                writer.spans.append((match.start(), match.end(), (f"sentiment:{labels['sentiment']}",)))
        writer.spans.sort()
        return Story(writer.text, labels, writer.spans)

    def _fields(self, hero, friend, labels) -> dict[str, Any]:
        """Each field is fixed text with tags, or a callable drawing a fresh word each time."""
        rng = self.rng
        g = hero["gender"]
        subj, obj, poss, _ = V.PRONOUNS[g]
        name_tags = ("name", f"name:{hero['name']}", g)
        pron_tags = ("pronoun", g)
        animal_tags = ("animal", f"animal:{labels['animal_class']}")
        problem = rng.choice(V.PROBLEMS).format(object=labels["object"], water=rng.choice(V.WATER), animal=labels["animal"])
        return {
            "Name": (hero["name"], name_tags),
            "name": (hero["name"], name_tags),
            "Friend": (friend["name"], ("name", f"name:{friend['name']}", friend["gender"])),
            "role": (hero["role"], ("role", g)),
            "subj": (subj, pron_tags),
            "Subj_cap": (subj.capitalize(), pron_tags),
            "poss": (poss, pron_tags),
            "Poss_cap": (poss.capitalize(), pron_tags),
            "profession": (hero["profession"], ("profession", f"profession:{hero['profession']}")),
            "profession2": (friend["profession"], ("profession", f"profession:{friend['profession']}")),
            "animal": (labels["animal"], animal_tags),
            "place": (labels["place"], ("place", f"place:{labels['place_kind']}")),
            "colour": (labels["colour"], ("colour", f"colour:{labels['colour']}")),
            "object": (labels["object"], ("object",)),
            "problem": (problem, ()),
            "Problem_cap": (problem[0].upper() + problem[1:], ()),
            "adj": lambda: (rng.choice(V.ADJECTIVES_CHARACTER), ()),
            "animal_adj": lambda: (rng.choice(V.ADJECTIVES_ANIMAL), ()),
            "obj_adj": lambda: (rng.choice(V.ADJECTIVES_OBJECT), ()),
            "weather": lambda: (rng.choice(V.WEATHER), ()),
            "Time": lambda: (rng.choice(V.TIMES), ()),
            "food": lambda: (rng.choice(V.FOODS), ("food",)),
            "found": lambda: (rng.choice(V.VERBS_FIND), ()),
            "played": lambda: (rng.choice(V.VERBS_PLAY), ()),
            "scenery": lambda: (rng.choice(V.SCENERY), ()),
            "scenery_adj": lambda: (rng.choice(V.SCENERY_ADJ), ()),
            "scenery_verb": lambda: (rng.choice(V.SCENERY_VERBS), ()),
            "number": lambda: (rng.choice(V.NUMBERS), ()),
            "verb_object": lambda: (rng.choice(V.VERBS_OBJECT), ()),
            "adverb": lambda: (rng.choice(V.ADVERBS), ()),
            "Adverb_cap": lambda: (rng.choice(V.ADVERBS).capitalize(), ()),
        }

    def generate(self, n: int) -> list[Story]:
        return [self.story() for _ in range(n)]


class _Writer:
    """Builds a text piece by piece, remembering the character span of every tagged field."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[tuple[int, int, tuple[str, ...]]] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, text: str, tags: tuple[str, ...] = ()) -> None:
        if text[:1].lower() in "aeiou" and self.parts and re.search(r"(^|\s)[Aa] $", self.parts[-1]):
            self.parts[-1] = self.parts[-1][:-1] + "n "  # "a apple" -> "an apple"
            self.length += 1
        if tags:
            self.spans.append((self.length, self.length + len(text), tags))
        self.parts.append(text)
        self.length += len(text)

    def fill(self, template: str, fields: dict[str, Any], rng: random.Random) -> None:
        position = 0
        for match in _FIELD.finditer(template):
            self.add(template[position : match.start()])
            value = fields[match.group(1)]
            text, tags = value() if callable(value) else value
            self.add(text, tags)
            position = match.end()
        self.add(template[position:])


def generate_stories(n: int, seed: int = 0) -> list[Story]:
    """``n`` stories from ``seed``; the same on every machine."""
    if n <= 0:
        raise ValueError(f"the number of stories must be positive, got {n}")
    return StoryGenerator(seed).generate(n)


def corpus_fingerprint(n: int, seed: int) -> str:
    """A hash of the generator's inputs and word lists: it changes whenever the corpus would."""
    vocab = {k: v for k, v in vars(V).items() if k.isupper()}
    text = json.dumps([n, seed, vocab, INTROS, JOB, MIDDLE, PROBLEM_INTROS, REACTIONS], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
