"""A generated fictional world and the multi-hop questions asked about it.

The world is fixed (its own constant seed) so every split, every task seed and every process sees the same
knowledge base; only which questions are drawn varies. Names are made of syllables, so a model cannot know
the answers from pre-training: it has to search. No name is a substring of another name or of a question
template, which keeps "the answer never appears in the question" true by construction.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

# The seed, the sizes, the syllables and the reserved text below all shape the world: changing any of them
# changes every kb task (and invalidates models trained on the old world).
WORLD_SEED = 20250917
N_COUNTRIES = 20
N_CITIES = 120
N_PEOPLE = 2500
N_COMPANIES = 1500  # each founded by a different person, so "the founder of X" and "the company Y founded" are unique
N_FIRST_NAMES = 120
_MIN_NAME_LEN = 4

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")  # open syllables repeated: they read more easily
_SYLLABLES = tuple(o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS)
_COUNTRY_ENDINGS = ("land", "ia", "mark", "or")
_COMPANY_SUFFIXES = ("Labs", "Works", "Systems", "Industries", "Foundry", "Group", "Dynamics", "Motors")
_PROFESSIONS = ("sculptor", "engineer", "chemist", "teacher", "architect", "pilot", "novelist", "surgeon",
                "economist", "violinist", "geologist", "carpenter", "astronomer", "lawyer", "baker")
_INDUSTRIES = ("robotics", "shipping", "textile", "software", "mining", "brewing", "aerospace", "pharmaceutical",
               "publishing", "energy", "furniture", "telecom")

# Two phrasings per kind; which one a question uses is fixed by its anchor, so each fact chain has exactly one
# question text (a paraphrase can never land in the other split).
_TEMPLATES = {
    "founder_birth_country": ("In which country was the founder of {x} born?",
                              "The founder of {x} was born in a city. Which country is that city in?"),
    "founder_birth_city": ("In which city was the founder of {x} born?",
                           "What is the birthplace city of the person who founded {x}?"),
    "birth_country": ("Which country is the city where {x} was born located in?",
                      "In which country was {x} born?"),
    "hq_country": ("In which country is the company founded by {x} headquartered?",
                   "The person {x} founded a company. In which country is its headquarters?"),
}
KINDS = tuple(_TEMPLATES)

# Text every question or doc may contain; a generated name must not hide inside any of it.
_DOC_PHRASES = ("is a country. The capital of has a population of million. is a city located in has about "
                "inhabitants. is a an was born in lives in founded company was founded by is headquartered in")
_RESERVED_TEXT = " ".join(
    [t for pair in _TEMPLATES.values() for t in pair] + [_DOC_PHRASES, *_PROFESSIONS, *_INDUSTRIES, *_COMPANY_SUFFIXES]
).lower()


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    population_millions: int


@dataclass(frozen=True)
class City:
    name: str
    country: str
    population: int


@dataclass(frozen=True)
class Person:
    name: str
    profession: str
    birth_city: str
    birth_year: int
    home_city: str  # a distractor: a second city in the person's doc that is not the birthplace
    company: str | None  # the company this person founded, if any


@dataclass(frozen=True)
class Company:
    name: str
    industry: str
    founder: str
    year: int
    hq_city: str  # a distractor for "where was the founder born"


@dataclass(frozen=True)
class World:
    countries: dict[str, Country]
    cities: dict[str, City]
    people: dict[str, Person]
    companies: dict[str, Company]


@dataclass(frozen=True)
class KBQuestion:
    """One multi-hop question; `hops` are the lookups that answer it, in order."""

    kind: str
    question: str
    answer: str
    hops: tuple[dict, ...]  # {"entity": searched name, "relation": ..., "value": what its doc says}


class _NameMaker:
    """Unique pronounceable words where no word is a substring of another word or of the reserved text."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._substrings: set[str] = set()  # every substring of every accepted word
        self._words: set[str] = set()

    def word(self, syllables: tuple[int, ...] = (2, 3), ending: str = "") -> str:
        while True:
            count = self._rng.choice(syllables)
            candidate = ("".join(self._rng.choices(_SYLLABLES, k=count)) + ending).lower()
            if len(candidate) < _MIN_NAME_LEN or candidate in self._substrings or candidate in _RESERVED_TEXT:
                continue  # too short, or hidden inside an earlier name or the template text
            inner = _substrings(candidate)
            if self._words.isdisjoint(inner):  # no earlier name hides inside this one
                self._words.add(candidate)
                self._substrings.update(inner)
                return candidate.capitalize()


def _substrings(word: str, min_len: int = _MIN_NAME_LEN) -> set[str]:
    # Names are never shorter than _MIN_NAME_LEN, so shorter substrings can never collide with one.
    return {word[i:j] for i in range(len(word)) for j in range(i + min_len, len(word) + 1)}


@cache
def world() -> World:
    """The one fixed world (built once per process, ~0.2 s)."""
    rng = random.Random(WORLD_SEED)
    names = _NameMaker(rng)
    countries, cities = _places(rng, names)
    city_names = list(cities)
    first_names = [names.word((2,)) for _ in range(N_FIRST_NAMES)]
    person_names = [f"{rng.choice(first_names)} {names.word()}" for _ in range(N_PEOPLE)]

    companies: dict[str, Company] = {}
    for founder in rng.sample(person_names, N_COMPANIES):
        name = f"{names.word()} {rng.choice(_COMPANY_SUFFIXES)}"
        year, hq = rng.randrange(1900, 2021), rng.choice(city_names)
        companies[name] = Company(name, rng.choice(_INDUSTRIES), founder, year, hq)
    company_of = {c.founder: c.name for c in companies.values()}

    people = {}
    for name in person_names:
        birth, home = rng.sample(city_names, 2)
        year = rng.randrange(1920, 1996)
        people[name] = Person(name, rng.choice(_PROFESSIONS), birth, year, home, company_of.get(name))
    return World(countries, cities, people, companies)


def _places(rng: random.Random, names: _NameMaker) -> tuple[dict[str, Country], dict[str, City]]:
    country_names = [names.word((2,), ending=rng.choice(_COUNTRY_ENDINGS)) for _ in range(N_COUNTRIES)]
    city_names = [names.word((2,)) for _ in range(N_CITIES)]
    # The first city of each country is its capital; the remaining cities are spread at random.
    country_of = dict(zip(city_names, country_names))
    country_of.update({city: rng.choice(country_names) for city in city_names[N_COUNTRIES:]})
    cities = {c: City(c, country_of[c], rng.randrange(20, 2000) * 1000) for c in city_names}
    countries = {c: Country(c, capital, rng.randrange(1, 90)) for c, capital in zip(country_names, city_names)}
    return countries, cities


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def _country_text(c: Country) -> str:
    return (f"{c.name} is a country. The capital of {c.name} is {c.capital}. "
            f"{c.name} has a population of {c.population_millions} million.")


def _city_text(c: City) -> str:
    return f"{c.name} is a city located in {c.country}. {c.name} has about {c.population:,} inhabitants."


def _person_text(p: Person) -> str:
    text = (f"{p.name} is {_a(p.profession)}. {p.name} was born in {p.birth_city} in {p.birth_year}. "
            f"{p.name} lives in {p.home_city}.")
    return text + (f" {p.name} founded {p.company}." if p.company else "")


def _company_text(c: Company) -> str:
    return (f"{c.name} is {_a(c.industry)} company. {c.name} was founded by {c.founder} in {c.year}. "
            f"{c.name} is headquartered in {c.hq_city}.")


@cache
def _documents() -> tuple[dict, ...]:
    w = world()
    docs = [("country", c.name, _country_text(c)) for c in w.countries.values()]
    docs += [("city", c.name, _city_text(c)) for c in w.cities.values()]
    docs += [("person", p.name, _person_text(p)) for p in w.people.values()]
    docs += [("company", c.name, _company_text(c)) for c in w.companies.values()]
    return tuple({"id": f"{kind}-{_slug(title)}", "title": title, "text": text} for kind, title, text in docs)


def documents() -> list[dict]:
    """One doc per entity: {"id", "title", "text"}; a fresh list of fresh dicts so callers cannot corrupt the cache."""
    return [dict(doc) for doc in _documents()]




def _hop(entity: str, relation: str, value: str) -> dict:
    return {"entity": entity, "relation": relation, "value": value}


def _hops(w: World, kind: str, anchor: str) -> list[dict]:
    if kind in ("founder_birth_country", "founder_birth_city"):
        founder = w.companies[anchor].founder
        city = w.people[founder].birth_city
        hops = [_hop(anchor, "founded_by", founder), _hop(founder, "born_in", city)]
        if kind == "founder_birth_country":
            hops.append(_hop(city, "located_in", w.cities[city].country))
        return hops
    if kind == "birth_country":
        city = w.people[anchor].birth_city
        return [_hop(anchor, "born_in", city), _hop(city, "located_in", w.cities[city].country)]
    if kind == "hq_country":
        company = w.people[anchor].company
        city = w.companies[company].hq_city
        return [_hop(anchor, "founded", company), _hop(company, "headquartered_in", city),
                _hop(city, "located_in", w.cities[city].country)]
    raise ValueError(f"unknown kb question kind {kind!r}; expected one of {', '.join(KINDS)}")


def _question(kind: str, anchor: str) -> KBQuestion:
    hops = _hops(world(), kind, anchor)
    templates = _TEMPLATES[kind]
    pick = hashlib.sha1(f"{kind}:{anchor}".encode()).digest()[0] % len(templates)
    return KBQuestion(kind, templates[pick].format(x=anchor), hops[-1]["value"], tuple(hops))


@cache
def all_questions() -> tuple[KBQuestion, ...]:
    """Every question the world supports, in a fixed order."""
    w = world()
    anchors = {
        "founder_birth_country": list(w.companies),
        "founder_birth_city": list(w.companies),
        "birth_country": list(w.people),
        "hq_country": [p.name for p in w.people.values() if p.company],
    }
    return tuple(_question(kind, anchor) for kind in KINDS for anchor in anchors[kind])
