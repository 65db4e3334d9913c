"""A seeded generator of varied, plain English sentences for the synthetic corpus.

A small probabilistic grammar over a few hundred common words (pronouns and noun
phrases as subjects, transitive and intransitive verbs in several tenses, objects,
adjectives, adverbs, prepositional phrases, questions, imperatives and compound
sentences). Every word is an ordinary dictionary word that a rule-based
synthesizer such as espeak-ng pronounces normally; there are no digits, names or
abbreviations. Sentences have 4 to 14 words.

Example:
    >>> s = generate_sentences(3, seed=0)
    >>> len(s), s == generate_sentences(3, seed=0)
    (3, True)
    >>> all(4 <= len(x.split()) <= 14 for x in s)
    True
    >>> normalize_transcript("Don't stop, Sam!")
    "DON'T STOP SAM"
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["generate_sentences", "normalize_transcript", "MIN_WORDS", "MAX_WORDS", "VOCABULARY"]

MIN_WORDS = 4
MAX_WORDS = 14


@dataclass(frozen=True)
class Verb:
    """A verb with the forms the grammar needs."""

    base: str
    third: str
    past: str
    ing: str


def _verbs(spec: str) -> tuple[Verb, ...]:
    """Parse ``"base third past ing; ..."`` into :class:`Verb` entries."""
    return tuple(Verb(*item.split()) for item in spec.split(";") if item.strip())


# Countable nouns, "singular plural"; the first _N_ANIMATE are people and animals.
_N_ANIMATE = 28
_NOUNS = [tuple(p.split()) for p in """
    man men; woman women; child children; friend friends; teacher teachers; doctor doctors;
    farmer farmers; driver drivers; student students; neighbor neighbors; worker workers;
    girl girls; boy boys; baby babies; family families; king kings; queen queens; cook cooks;
    dog dogs; cat cats; bird birds; horse horses; fish fish; mouse mice; rabbit rabbits;
    cow cows; sheep sheep; duck ducks; book books; letter letters; box boxes; cup cups;
    glass glasses; bottle bottles; chair chairs; table tables; door doors; window windows;
    key keys; bag bags; coat coats; hat hats; shoe shoes; picture pictures; lamp lamps;
    phone phones; car cars; boat boats; train trains; bicycle bicycles; bus buses;
    apple apples; orange oranges; cake cakes; egg eggs; sandwich sandwiches; flower flowers;
    tree trees; stone stones; ball balls; song songs; story stories; game games;
    map maps; ticket tickets; gift gifts; basket baskets; blanket blankets; candle candles;
    pencil pencils; clock clocks; bell bells; plate plates; spoon spoons; knife knives;
    shirt shirts; jacket jackets; bridge bridges; house houses; road roads; garden gardens;
""".split(";") if p.strip()]

# Places used after prepositions ("in the kitchen").
_PLACES = """kitchen garden park river forest village city market station library school
office hospital church field hill valley beach harbor lake mountain street corner house
room hall yard barn shop bakery theater museum island desert road bridge tower castle
""".split()

_PREPOSITIONS = """in near behind beside under above across along around through inside outside
over past toward""".split()

_ADJECTIVES = """old young big small little tall short long new bright dark quiet loud happy
sad angry tired busy lazy clever kind gentle brave strange funny warm cold hot wet dry clean
dirty heavy light soft hard empty full green red blue yellow brown black white golden silver
wooden broken shiny lovely ugly rich poor careful friendly famous ancient simple""".split()

_ADVERBS = """quickly slowly quietly loudly carefully happily sadly gently suddenly
always often never usually sometimes finally nearly easily calmly proudly softly
bravely eagerly politely early again""".split()

_TRANSITIVE = _verbs("""
    see sees saw seeing; find finds found finding; take takes took taking; bring brings brought bringing;
    carry carries carried carrying; open opens opened opening; close closes closed closing;
    like likes liked liking; love loves loved loving; want wants wanted wanting; need needs needed needing;
    buy buys bought buying; sell sells sold selling; watch watches watched watching; hold holds held holding;
    keep keeps kept keeping; lose loses lost losing; move moves moved moving; clean cleans cleaned cleaning;
    paint paints painted painting; draw draws drew drawing; build builds built building; fix fixes fixed fixing;
    break breaks broke breaking; push pushes pushed pushing; pull pulls pulled pulling; wash washes washed washing;
    follow follows followed following; visit visits visited visiting; help helps helped helping;
    call calls called calling; meet meets met meeting; remember remembers remembered remembering;
    forget forgets forgot forgetting; hide hides hid hiding; throw throws threw throwing; catch catches caught catching;
    read reads read reading; write writes wrote writing; cook cooks cooked cooking; eat eats ate eating;
    choose chooses chose choosing; send sends sent sending; show shows showed showing; drop drops dropped dropping;
    fill fills filled filling; touch touches touched touching; feed feeds fed feeding; teach teaches taught teaching
""")

_INTRANSITIVE = _verbs("""
    walk walks walked walking; run runs ran running; sleep sleeps slept sleeping; sing sings sang singing;
    dance dances danced dancing; laugh laughs laughed laughing; smile smiles smiled smiling; wait waits waited waiting;
    sit sits sat sitting; stand stands stood standing; swim swims swam swimming; play plays played playing;
    work works worked working; rest rests rested resting; listen listens listened listening; arrive arrives arrived arriving;
    leave leaves left leaving; travel travels traveled traveling; jump jumps jumped jumping; cry cries cried crying;
    shout shouts shouted shouting; whisper whispers whispered whispering; climb climbs climbed climbing;
    fall falls fell falling; stay stays stayed staying; return returns returned returning; talk talks talked talking
""")

_PRONOUNS = {  # subject, object, possessive, third-person singular?
    "I": ("me", "my", False), "you": ("you", "your", False), "he": ("him", "his", True),
    "she": ("her", "her", True), "we": ("us", "our", False), "they": ("them", "their", False),
}

_SING_DETS = "the a my your his her our their this that every one".split()
_PLUR_DETS = "the some many these those my your our their two three few".split()
_CONNECTIVES = "and but so because while".split()
_WH = "where when why how".split()
_TIME_PHRASES = ["this morning", "last night", "every day", "after dinner", "before lunch",
                 "in the evening", "at night", "next week", "on sunday", "in the spring", "today",
                 "yesterday", "later"]

VOCABULARY: frozenset[str] = frozenset(
    w.lower()
    for group in (
        [n for pair in _NOUNS for n in pair], _PLACES, _PREPOSITIONS, _ADJECTIVES, _ADVERBS,
        [f for v in _TRANSITIVE + _INTRANSITIVE for f in (v.base, v.third, v.past, v.ing)],
        list(_PRONOUNS), [p for o, p, _ in _PRONOUNS.values()] + [o for o, p, _ in _PRONOUNS.values()],
        _SING_DETS, _PLUR_DETS, _CONNECTIVES, _WH, " ".join(_TIME_PHRASES).split(),
    )
    for w in group
)
"""Content and function words the grammar draws from (lower case, without auxiliaries)."""


class _Grammar:
    """The sentence grammar; every choice goes through one ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def p(self, prob: float) -> bool:
        return self.r.random() < prob

    def c(self, seq):
        return self.r.choice(seq)

    # -- noun phrases ---------------------------------------------------------
    def noun_phrase(self, plural: bool | None = None, animate: bool = False) -> tuple[str, bool]:
        """A determiner, optional adjectives and a noun; returns ``(text, is_plural)``."""
        plural = self.p(0.3) if plural is None else plural
        sing, plur = self.c(_NOUNS[:_N_ANIMATE] if animate else _NOUNS)
        words = [self.c(_PLUR_DETS if plural else _SING_DETS)]
        for _ in range(self.r.choices([0, 1, 2], [0.45, 0.45, 0.1])[0]):
            words.append(self.c(_ADJECTIVES))
        words.append(plur if plural else sing)
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return " ".join(words), plural

    def subject(self) -> tuple[str, bool]:
        """``(text, takes third-person singular verb)``."""
        if self.p(0.35):
            pron = self.c(list(_PRONOUNS))
            return pron, _PRONOUNS[pron][2]
        text, plural = self.noun_phrase(animate=self.p(0.85))
        return text, not plural

    def object(self) -> str:
        if self.p(0.15):
            return self.c([o for o, _, _ in _PRONOUNS.values()])
        return self.noun_phrase()[0]

    def place(self) -> str:
        return f"{self.c(_PREPOSITIONS)} the {self.c(_PLACES)}"

    def extras(self) -> list[str]:
        """Optional adverb, prepositional phrase and time phrase."""
        out = []
        if self.p(0.45):
            out.append(self.place())
        if self.p(0.3):
            out.append(self.c(_ADVERBS))
        if self.p(0.15):
            out.append(self.c(_TIME_PHRASES))
        self.r.shuffle(out)
        return out

    # -- clauses ----------------------------------------------------------------
    def verb_phrase(self, third: bool, subj: str) -> str:
        """A conjugated verb with its object, in a random tense."""
        verb = self.c(_TRANSITIVE if self.p(0.6) else _INTRANSITIVE)
        tense = self.r.choices(["present", "past", "future", "progressive", "modal", "negative"],
                               [0.25, 0.3, 0.12, 0.13, 0.1, 0.1])[0]
        if tense == "present":
            form = verb.third if third else verb.base
        elif tense == "past":
            form = verb.past
        elif tense == "future":
            form = f"will {verb.base}"
        elif tense == "progressive":
            be = "am" if subj == "I" else ("is" if third else "are")
            form = f"{be} {verb.ing}"
        elif tense == "modal":
            form = f"{self.c(['can', 'could', 'should', 'might', 'must'])} {verb.base}"
        else:
            aux = self.c(["didn't", "doesn't" if third else "don't", "won't", "can't"])
            form = f"{aux} {verb.base}"
        words = [form]
        if verb in _TRANSITIVE:
            words.append(self.object())
        return " ".join(words + self.extras())

    def clause(self) -> str:
        subj, third = self.subject()
        return f"{subj} {self.verb_phrase(third, subj)}"

    # -- sentence types ---------------------------------------------------------
    def statement(self) -> str:
        return self.clause() + "."

    def compound(self) -> str:
        return f"{self.clause()} {self.c(_CONNECTIVES)} {self.clause()}."

    def question(self) -> str:
        subj, third = self.subject()
        verb = self.c(_TRANSITIVE)
        kind = self.r.randrange(5)
        if kind == 0:
            aux = self.c(["did", "will", "can", "should", "does" if third else "do"])
            return f"{aux.capitalize()} {subj} {verb.base} {self.object()}?"
        if kind == 1:
            wh = self.c(_WH)
            aux = self.c(["did", "will", "does" if third else "do"])
            return f"{wh.capitalize()} {aux} {subj} {verb.base} {self.object()}?"
        if kind == 2:
            np, plural = self.noun_phrase()
            return f"{'Are' if plural else 'Is'} {np} {self.c(_ADJECTIVES)}?"
        if kind == 3:
            return f"Who {verb.past} {self.object()} {self.place()}?"
        return f"{self.c(['Can you', 'Could you', 'Would you'])} {verb.base} {self.object()} {self.place()}?"

    def imperative(self) -> str:
        verb = self.c(_TRANSITIVE)
        start = self.c(["Please ", "", "", "Now ", "Never ", "Always "])
        rest = " ".join([verb.base, self.object()] + self.extras())
        return (start + rest)[0].upper() + (start + rest)[1:] + self.c([".", ".", "!"])

    def existential(self) -> str:
        np, plural = self.noun_phrase()
        rest = np.split(" ", 1)[1]
        if plural:
            det = self.c(["some", "many", "two", "three", "a few"]) + " "
        else:
            det = "an " if rest[0] in "aeiou" else "a "
        return f"There {'are' if plural else 'is'} {det}{rest} {self.place()}."

    def reported(self) -> str:
        subj, third = self.subject()
        say = self.c(["said", "thinks" if third else "think", "knew", "hoped", "heard"])
        return f"{subj} {say} that {self.clause()}."

    def sentence(self) -> str:
        """One sentence of a randomly chosen type, first letter capitalized."""
        make = self.r.choices(
            [self.statement, self.compound, self.question, self.imperative, self.existential, self.reported],
            [0.36, 0.14, 0.2, 0.1, 0.08, 0.12],
        )[0]
        s = make()
        return s[0].upper() + s[1:]


def _word_count(sentence: str) -> int:
    return len(normalize_transcript(sentence).split())


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of 4 to 14 words, deterministic for ``seed``, unique where possible.

    Sentences keep natural case and punctuation (which steers a synthesizer's
    intonation); :func:`normalize_transcript` gives the corpus transcript.
    """
    rng = random.Random(f"sentences-{seed}")
    grammar = _Grammar(rng)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        s = grammar.sentence()
        if not MIN_WORDS <= _word_count(s) <= MAX_WORDS:
            continue
        key = normalize_transcript(s)
        if key in seen and attempts < 50 * n + 1000:
            continue
        seen.add(key)
        out.append(s)
    return out


_NOT_ALLOWED = re.compile(r"[^A-Z' ]+")


def normalize_transcript(text: str) -> str:
    """Upper case, letters, apostrophes and single spaces only (the LibriSpeech convention)."""
    text = _NOT_ALLOWED.sub(" ", text.upper())
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))
