"""A synthetic English-to-German translation task: the built-in corpus, no download.

A small grammar draws an abstract sentence (clauses made of noun phrases, a verb, an
optional place, negation, a fronted adverb, embedded clauses), which is then realized
once in English and once in German. Each English sentence has exactly one German
translation, so a small model can learn the task to near-perfect BLEU, yet it needs
what makes real translation hard:

- gender and irregular plurals (der Mann / die Männer, das Buch / die Bücher) and weak
  masculine nouns (der Junge / den Jungen);
- case: nominative subjects, accusative objects (den Hund), dative after prepositions
  and after helfen/folgen (im Park, dem Mann), dative plural -n (den Kindern);
- adjective declension: weak after der (den großen Hund), mixed after ein/kein (ein
  großes Haus), strong after numbers and bare plurals (zwei große Hunde);
- subject-verb agreement in both languages, with irregular stems (sieht / sehen);
- word order: verb-second after a fronted adverb (Heute sieht der Hund die Katze),
  verb-final subordinate clauses (..., dass der Hund die Katze sieht), the place of
  nicht, and kein for negated indefinite objects (sieht keine Katze);
- surface: capitalized German nouns, a comma before every German subordinate clause
  and none in English, a capital first letter and a final period.

Everything is drawn from `random.Random(seed)`, so a seed gives the same corpus on
every machine and Python version.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Iterator, Sequence

# ---------------------------------------------------------------------------- lexicon
# Noun kinds: p person, a animal, f food, r readable, t thing, l place (only in PPs).
# (english singular, english plural, german singular, german plural, gender, kind)
NOUNS = (
    ('man', 'men', 'Mann', 'Männer', 'm', 'p'),
    ('woman', 'women', 'Frau', 'Frauen', 'f', 'p'),
    ('child', 'children', 'Kind', 'Kinder', 'n', 'p'),
    ('boy', 'boys', 'Junge', 'Jungen', 'm', 'p'),
    ('girl', 'girls', 'Mädchen', 'Mädchen', 'n', 'p'),
    ('teacher', 'teachers', 'Lehrer', 'Lehrer', 'm', 'p'),
    ('doctor', 'doctors', 'Arzt', 'Ärzte', 'm', 'p'),
    ('student', 'students', 'Student', 'Studenten', 'm', 'p'),
    ('neighbor', 'neighbors', 'Nachbar', 'Nachbarn', 'm', 'p'),
    ('mother', 'mothers', 'Mutter', 'Mütter', 'f', 'p'),
    ('father', 'fathers', 'Vater', 'Väter', 'm', 'p'),
    ('dog', 'dogs', 'Hund', 'Hunde', 'm', 'a'),
    ('cat', 'cats', 'Katze', 'Katzen', 'f', 'a'),
    ('horse', 'horses', 'Pferd', 'Pferde', 'n', 'a'),
    ('bird', 'birds', 'Vogel', 'Vögel', 'm', 'a'),
    ('mouse', 'mice', 'Maus', 'Mäuse', 'f', 'a'),
    ('cow', 'cows', 'Kuh', 'Kühe', 'f', 'a'),
    ('wolf', 'wolves', 'Wolf', 'Wölfe', 'm', 'a'),
    ('bear', 'bears', 'Bär', 'Bären', 'm', 'a'),
    ('lion', 'lions', 'Löwe', 'Löwen', 'm', 'a'),
    ('elephant', 'elephants', 'Elefant', 'Elefanten', 'm', 'a'),
    ('apple', 'apples', 'Apfel', 'Äpfel', 'm', 'f'),
    ('egg', 'eggs', 'Ei', 'Eier', 'n', 'f'),
    ('cake', 'cakes', 'Kuchen', 'Kuchen', 'm', 'f'),
    ('pear', 'pears', 'Birne', 'Birnen', 'f', 'f'),
    ('sausage', 'sausages', 'Wurst', 'Würste', 'f', 'f'),
    ('book', 'books', 'Buch', 'Bücher', 'n', 'r'),
    ('letter', 'letters', 'Brief', 'Briefe', 'm', 'r'),
    ('newspaper', 'newspapers', 'Zeitung', 'Zeitungen', 'f', 'r'),
    ('story', 'stories', 'Geschichte', 'Geschichten', 'f', 'r'),
    ('ball', 'balls', 'Ball', 'Bälle', 'm', 't'),
    ('hat', 'hats', 'Hut', 'Hüte', 'm', 't'),
    ('car', 'cars', 'Auto', 'Autos', 'n', 't'),
    ('bottle', 'bottles', 'Flasche', 'Flaschen', 'f', 't'),
    ('key', 'keys', 'Schlüssel', 'Schlüssel', 'm', 't'),
    ('picture', 'pictures', 'Bild', 'Bilder', 'n', 't'),
    ('chair', 'chairs', 'Stuhl', 'Stühle', 'm', 't'),
    ('bag', 'bags', 'Tasche', 'Taschen', 'f', 't'),
    ('shoe', 'shoes', 'Schuh', 'Schuhe', 'm', 't'),
    ('flower', 'flowers', 'Blume', 'Blumen', 'f', 't'),
    ('house', 'houses', 'Haus', 'Häuser', 'n', 't'),
    ('tree', 'trees', 'Baum', 'Bäume', 'm', 't'),
    ('park', 'parks', 'Park', 'Parks', 'm', 'l'),
    ('garden', 'gardens', 'Garten', 'Gärten', 'm', 'l'),
    ('table', 'tables', 'Tisch', 'Tische', 'm', 'l'),
    ('bridge', 'bridges', 'Brücke', 'Brücken', 'f', 'l'),
    ('kitchen', 'kitchens', 'Küche', 'Küchen', 'f', 'l'),
    ('forest', 'forests', 'Wald', 'Wälder', 'm', 'l'),
    ('city', 'cities', 'Stadt', 'Städte', 'f', 'l'),
    ('river', 'rivers', 'Fluss', 'Flüsse', 'm', 'l'),
    ('street', 'streets', 'Straße', 'Straßen', 'f', 'l'),
    ('school', 'schools', 'Schule', 'Schulen', 'f', 'l'),
)
# n-declension: these masculines take -(e)n outside the nominative singular, which here
# always equals the plural (den Jungen, dem Löwen).
WEAK_NOUNS = frozenset({'boy', 'student', 'neighbor', 'bear', 'lion', 'elephant'})

# (english, german stem, noun kinds it may describe); the stem takes the ending.
ADJECTIVES = (
    ('big', 'groß', 'paflrt'), ('small', 'klein', 'paflrt'), ('old', 'alt', 'paflrt'),
    ('new', 'neu', 'flrt'), ('red', 'rot', 'aflrt'), ('black', 'schwarz', 'alrt'),
    ('green', 'grün', 'flrt'), ('beautiful', 'schön', 'paflrt'), ('dark', 'dunkl', 'lrt'),
    ('young', 'jung', 'pa'), ('tired', 'müd', 'pa'), ('hungry', 'hungrig', 'pa'),
    ('lazy', 'faul', 'pa'), ('clever', 'klug', 'pa'), ('fast', 'schnell', 'pat'),
)

# (english 3sg, english base, german 3sg, german 3pl, subject kinds, object kinds,
#  object case)
TRANSITIVE_VERBS = (
    ('sees', 'see', 'sieht', 'sehen', 'pa', 'pafrt', 'acc'),
    ('eats', 'eat', 'isst', 'essen', 'pa', 'f', 'acc'),
    ('reads', 'read', 'liest', 'lesen', 'p', 'r', 'acc'),
    ('carries', 'carry', 'trägt', 'tragen', 'pa', 'pfrt', 'acc'),
    ('finds', 'find', 'findet', 'finden', 'pa', 'pafrt', 'acc'),
    ('buys', 'buy', 'kauft', 'kaufen', 'p', 'frt', 'acc'),
    ('likes', 'like', 'mag', 'mögen', 'pa', 'pafrt', 'acc'),
    ('holds', 'hold', 'hält', 'halten', 'p', 'afrt', 'acc'),
    ('takes', 'take', 'nimmt', 'nehmen', 'pa', 'frt', 'acc'),
    ('washes', 'wash', 'wäscht', 'waschen', 'p', 'pat', 'acc'),
    ('catches', 'catch', 'fängt', 'fangen', 'pa', 'at', 'acc'),
    ('meets', 'meet', 'trifft', 'treffen', 'pa', 'pa', 'acc'),
    ('visits', 'visit', 'besucht', 'besuchen', 'p', 'p', 'acc'),
    ('draws', 'draw', 'zeichnet', 'zeichnen', 'p', 'pafrt', 'acc'),
    ('sells', 'sell', 'verkauft', 'verkaufen', 'p', 'afrt', 'acc'),
    ('helps', 'help', 'hilft', 'helfen', 'pa', 'pa', 'dat'),
    ('follows', 'follow', 'folgt', 'folgen', 'pa', 'pa', 'dat'),
)
# (english 3sg, english base, german 3sg, german 3pl, subject kinds)
INTRANSITIVE_VERBS = (
    ('sleeps', 'sleep', 'schläft', 'schlafen', 'pa'),
    ('runs', 'run', 'läuft', 'laufen', 'pa'),
    ('laughs', 'laugh', 'lacht', 'lachen', 'p'),
    ('sings', 'sing', 'singt', 'singen', 'pa'),
    ('waits', 'wait', 'wartet', 'warten', 'pa'),
    ('swims', 'swim', 'schwimmt', 'schwimmen', 'pa'),
    ('plays', 'play', 'spielt', 'spielen', 'pa'),
    ('works', 'work', 'arbeitet', 'arbeiten', 'p'),
)
# Verbs that take a that-clause (dass ...); their subjects are people.
CLAUSE_VERBS = (
    ('says', 'say', 'sagt', 'sagen', 'p'),
    ('thinks', 'think', 'denkt', 'denken', 'p'),
    ('knows', 'know', 'weiß', 'wissen', 'p'),
    ('believes', 'believe', 'glaubt', 'glauben', 'p'),
    ('hopes', 'hope', 'hofft', 'hoffen', 'p'),
)

ADVERBS = (('today', 'heute'), ('tomorrow', 'morgen'), ('now', 'jetzt'), ('often', 'oft'),
           ('sometimes', 'manchmal'), ('usually', 'meistens'), ('in the evening', 'abends'))
CONJUNCTIONS = (('that', 'dass'), ('because', 'weil'), ('when', 'wenn'),
                ('although', 'obwohl'), ('while', 'während'), ('before', 'bevor'))
PREPOSITIONS = (('in', 'in'), ('on', 'auf'), ('under', 'unter'), ('behind', 'hinter'),
                ('by', 'an'), ('in front of', 'vor'))
# (english preposition, place noun, whether the plural reads naturally)
PLACES = (
    ('in', 'park', False), ('in', 'garden', True), ('on', 'table', True),
    ('under', 'bridge', False), ('in', 'kitchen', False), ('in', 'forest', True),
    ('in', 'city', False), ('by', 'river', False), ('on', 'street', True),
    ('in front of', 'school', False), ('behind', 'house', True), ('under', 'tree', True),
)
NUMBERS = {2: ('two', 'zwei'), 3: ('three', 'drei'), 4: ('four', 'vier'), 5: ('five', 'fünf'),
           6: ('six', 'sechs'), 7: ('seven', 'sieben'), 8: ('eight', 'acht'),
           9: ('nine', 'neun'), 10: ('ten', 'zehn'), 11: ('eleven', 'elf'),
           12: ('twelve', 'zwölf')}

_NOUN = {n[0]: n for n in NOUNS}
_ADJ = {a[0]: a for a in ADJECTIVES}
_VERB = {v[1]: v for v in TRANSITIVE_VERBS + INTRANSITIVE_VERBS + CLAUSE_VERBS}
_OBJECT_CASE = {v[1]: v[6] for v in TRANSITIVE_VERBS}
_ADVERB = dict(ADVERBS)
_CONJUNCTION = dict(CONJUNCTIONS)
_PREPOSITION = dict(PREPOSITIONS)

# German determiners by (gender or 'pl', case).
_DEFINITE = {
    ('m', 'nom'): 'der', ('m', 'acc'): 'den', ('m', 'dat'): 'dem',
    ('f', 'nom'): 'die', ('f', 'acc'): 'die', ('f', 'dat'): 'der',
    ('n', 'nom'): 'das', ('n', 'acc'): 'das', ('n', 'dat'): 'dem',
    ('pl', 'nom'): 'die', ('pl', 'acc'): 'die', ('pl', 'dat'): 'den',
}
_INDEFINITE = {  # ein-words; kein- adds a k and also has a plural
    ('m', 'nom'): 'ein', ('m', 'acc'): 'einen', ('m', 'dat'): 'einem',
    ('f', 'nom'): 'eine', ('f', 'acc'): 'eine', ('f', 'dat'): 'einer',
    ('n', 'nom'): 'ein', ('n', 'acc'): 'ein', ('n', 'dat'): 'einem',
    ('pl', 'nom'): 'eine', ('pl', 'acc'): 'eine', ('pl', 'dat'): 'einen',
}
_CONTRACTIONS = {('in', 'dem'): 'im', ('an', 'dem'): 'am'}

MAX_DEPTH = 2  # embedded clauses below a main clause, at most
MAX_WORDS = 25  # longer English sentences are redrawn, to keep batches short


# ------------------------------------------------------------------ sentence structure
@dataclasses.dataclass(frozen=True)
class NounPhrase:
  """`det` is 'the', 'a', a number, None (bare plural), or 'no': German kein, which
  only the realization of a negated clause makes."""
  noun: str                 # key into NOUNS: the English singular
  det: str | int | None = 'the'
  plural: bool = False
  adj: str | None = None    # key into ADJECTIVES: the English word

  def __post_init__(self):
    if self.det == 'a' and self.plural:
      raise ValueError('"a" takes a singular noun')
    if (self.det is None or isinstance(self.det, int)) and not self.plural:
      raise ValueError('numbers and bare nouns are plural')


@dataclasses.dataclass(frozen=True)
class Place:
  prep: str                 # key into PREPOSITIONS: the English preposition
  noun: NounPhrase


@dataclasses.dataclass(frozen=True)
class Clause:
  subject: NounPhrase
  verb: str                 # English base form, key into the verb tables
  obj: NounPhrase | None = None
  place: Place | None = None
  negated: bool = False
  adverb: str | None = None  # fronted time adverb (English); main clauses only
  conj: str | None = None   # English conjunction introducing `sub`
  sub: Clause | None = None  # the that-clause of a say-verb, or an adverbial clause


Sentence = Sequence[Clause]  # main clauses joined by "and"


# --------------------------------------------------------------------------- English
def english_noun_phrase(np: NounPhrase) -> list[str]:
  en_sg, en_pl = _NOUN[np.noun][:2]
  words = [np.adj] if np.adj else []
  words.append(en_pl if np.plural else en_sg)
  if np.det == 'a':
    return ['an' if words[0][0] in 'aeiou' else 'a'] + words
  if isinstance(np.det, int):
    return [NUMBERS[np.det][0]] + words
  if np.det == 'the':
    return ['the'] + words
  return words


def english_clause(c: Clause) -> list[str]:
  en_3sg, en_base = _VERB[c.verb][:2]
  if c.negated:  # do-support
    verb = ['do' if c.subject.plural else 'does', 'not', en_base]
  else:
    verb = [en_base if c.subject.plural else en_3sg]
  words = [c.adverb] if c.adverb else []
  words += english_noun_phrase(c.subject) + verb
  if c.obj:
    words += english_noun_phrase(c.obj)
  if c.place:
    words += [c.place.prep] + english_noun_phrase(c.place.noun)
  if c.sub:
    words += [c.conj] + english_clause(c.sub)
  return words


def english(sentence: Sentence) -> str:
  words = []
  for i, clause in enumerate(sentence):
    words += (['and'] if i else []) + english_clause(clause)
  return _finish(words)


# ---------------------------------------------------------------------------- German
def _adjective_ending(det, gender: str, case: str) -> str:
  if gender == 'pl':  # plural: -e only when nothing before shows the case
    return 'e' if (det is None or isinstance(det, int)) and case != 'dat' else 'en'
  if case == 'dat' or (case == 'acc' and gender == 'm'):
    return 'en'
  if det == 'the':  # weak: the article already shows gender and case
    return 'e'
  return {'m': 'er', 'f': 'e', 'n': 'es'}[gender]  # mixed: ein shows too little


def german_noun_phrase(np: NounPhrase, case: str) -> list[str]:
  _, _, de_sg, de_pl, gender, _ = _NOUN[np.noun]
  key = 'pl' if np.plural else gender
  if np.plural:
    noun = de_pl + 'n' if case == 'dat' and de_pl[-1] not in 'ns' else de_pl
  else:
    noun = de_pl if np.noun in WEAK_NOUNS and case != 'nom' else de_sg
  words = [noun]
  if np.adj:
    words.insert(0, _ADJ[np.adj][1] + _adjective_ending(np.det, key, case))
  if np.det == 'the':
    words.insert(0, _DEFINITE[key, case])
  elif np.det == 'a':
    words.insert(0, _INDEFINITE[key, case])
  elif np.det == 'no':
    words.insert(0, 'k' + _INDEFINITE[key, case])
  elif isinstance(np.det, int):
    words.insert(0, NUMBERS[np.det][1])
  return words


def german_place(place: Place) -> list[str]:
  prep = _PREPOSITION[place.prep]
  np = german_noun_phrase(place.noun, 'dat')
  if (prep, np[0]) in _CONTRACTIONS:  # in dem Park -> im Park
    return [_CONTRACTIONS[prep, np[0]]] + np[1:]
  return [prep] + np


def german_clause(c: Clause, main: bool = True) -> list[str]:
  """Main clauses put the verb second, subordinate clauses put it last."""
  verb = _VERB[c.verb][3 if c.subject.plural else 2]
  middle = []  # between the finite verb of a main clause and the end of the clause
  negation = ['nicht'] if c.negated else []
  if c.obj:
    obj = c.obj
    if c.negated and (obj.det == 'a' or obj.det is None):
      # "does not see a cat" -> "sieht keine Katze": kein replaces ein and nicht.
      obj, negation = dataclasses.replace(obj, det='no'), []
    middle += german_noun_phrase(obj, _OBJECT_CASE[c.verb])
  middle += negation  # nicht follows the object and precedes the place
  if c.place:
    middle += german_place(c.place)
  subject = german_noun_phrase(c.subject, 'nom')
  if not main:
    words = subject + middle + [verb]
  elif c.adverb:  # the adverb takes the first position, the verb stays second
    words = [_ADVERB[c.adverb], verb] + subject + middle
  else:
    words = subject + [verb] + middle
  if c.sub:
    words[-1] += ','
    words += [_CONJUNCTION[c.conj]] + german_clause(c.sub, main=False)
  return words


def german(sentence: Sentence) -> str:
  words = []
  for i, clause in enumerate(sentence):
    if i:
      if sentence[i - 1].sub:  # close the subordinate clause before "und"
        words[-1] += ','
      words.append('und')
    words += german_clause(clause)
  return _finish(words)


def _finish(words: list[str]) -> str:
  text = ' '.join(words)
  return text[0].upper() + text[1:] + '.'


def translate(sentence: Sentence) -> tuple[str, str]:
  return english(sentence), german(sentence)


# ------------------------------------------------------------------------ generation
@functools.lru_cache(maxsize=None)
def _nouns_of(kinds: str) -> tuple[str, ...]:
  return tuple(n[0] for n in NOUNS if n[5] in kinds)


@functools.lru_cache(maxsize=None)
def _adjectives_for(kind: str) -> tuple[str, ...]:
  return tuple(a[0] for a in ADJECTIVES if kind in a[2])


def random_noun_phrase(rng: random.Random, kinds: str) -> NounPhrase:
  noun = rng.choice(_nouns_of(kinds))
  r = rng.random()
  if r < 0.45:
    det, plural = 'the', rng.random() < 0.35
  elif r < 0.65:
    det, plural = 'a', False
  elif r < 0.8:
    det, plural = rng.randint(2, 12), True
  else:
    det, plural = None, True
  adj = None
  if rng.random() < 0.3:
    adj = rng.choice(_adjectives_for(_NOUN[noun][5]))
  return NounPhrase(noun, det, plural, adj)


def random_place(rng: random.Random) -> Place:
  prep, noun, plural_ok = rng.choice(PLACES)
  adj = rng.choice(_adjectives_for('l')) if rng.random() < 0.2 else None
  return Place(prep, NounPhrase(noun, 'the', plural_ok and rng.random() < 0.3, adj))


def random_clause(rng: random.Random, depth: int = 0) -> Clause:
  """A clause at embedding `depth` (0: main clause)."""
  r = rng.random()
  if depth < MAX_DEPTH and r < 0.12:
    verb = rng.choice(CLAUSE_VERBS)
    subject = random_noun_phrase(rng, verb[4])
    negated = rng.random() < 0.15
    adverb = _random_adverb(rng, depth)
    sub = random_clause(rng, depth + 1)
    return Clause(subject, verb[1], negated=negated, adverb=adverb, conj='that', sub=sub)
  if r < 0.6:
    verb = rng.choice(TRANSITIVE_VERBS)
    subject = random_noun_phrase(rng, verb[4])
    obj = random_noun_phrase(rng, verb[5])
  else:
    verb = rng.choice(INTRANSITIVE_VERBS)
    subject, obj = random_noun_phrase(rng, verb[4]), None
  place = random_place(rng) if rng.random() < (0.2 if obj else 0.4) else None
  negated = rng.random() < 0.2
  adverb = _random_adverb(rng, depth)
  conj = sub = None
  if depth < MAX_DEPTH and rng.random() < 0.2:
    conj = rng.choice(CONJUNCTIONS[1:])[0]
    sub = random_clause(rng, depth + 1)
  return Clause(subject, verb[1], obj, place, negated, adverb, conj, sub)


def _random_adverb(rng: random.Random, depth: int) -> str | None:
  if depth == 0 and rng.random() < 0.25:
    return rng.choice(ADVERBS)[0]
  return None


def random_sentence(rng: random.Random) -> list[Clause]:
  sentence = [random_clause(rng)]
  if rng.random() < 0.2:
    sentence.append(random_clause(rng))
  return sentence


def _pair_stream(rng: random.Random) -> Iterator[tuple[str, str]]:
  while True:
    en, de = translate(random_sentence(rng))
    if en.count(' ') < MAX_WORDS:
      yield en, de


# ------------------------------------------------------------------------------- API
def generate_pairs(seed: int, count: int) -> list[tuple[str, str]]:
  """`count` (english, german) sentence pairs, deterministic from `seed`."""
  stream = _pair_stream(random.Random(seed))
  return [next(stream) for _ in range(count)]


def splits(train_size: int = 100_000, eval_size: int = 1_000,
           seed: int = 0) -> dict[str, list[tuple[str, str]]]:
  """{'train': ..., 'validation': ..., 'test': ...}.

  Validation and test are drawn from other seeds, with every pair whose English side
  occurs in train removed, no overlap between validation and test (nor repeats within
  either), each exactly `eval_size` long (drawing until full).
  """
  train = generate_pairs(seed, train_size)
  seen = {en for en, _ in train}  # grows, so eval sets are also free of repeats
  result = {'train': train}
  for name in ('validation', 'test'):
    # String seeds hash the same everywhere (sha512), and cannot collide with `seed`.
    stream = _pair_stream(random.Random(f'{seed}/{name}'))
    pairs = []
    while len(pairs) < eval_size:
      en, de = next(stream)
      if en not in seen:
        seen.add(en)
        pairs.append((en, de))
    result[name] = pairs
  return result
