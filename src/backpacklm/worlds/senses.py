"""A synthetic English-like world with planted structure for the sense methods (topics, polysemy, gender, facts).

Documents are lines; each line is one of three kinds:
    topic   4-6 sentences of one topic: "the {adjective} {noun} {verb} the {object} ." and, for the topic's
            polysemous words, "the {word} {continuation} the {object} ." with a continuation of that topic's meaning
    people  4 sentences "the {profession} {verb} {he|she} was {state} ." with he at the profession's planted rate
    facts   3 sentences "i bought the {product} {maker} edition ." / "the {product} {maker} edition works well ."
            (the maker right after the product: with "from" between them, a 4-sense model may store all four makers
            in the four senses of "from" and pick one by context, which no edit of the product can move)

What a method must find is in truth.json beside the corpus: the topic vocabularies (each word in one topic only),
the polysemous words with both meanings' continuation words, the planted P(he | profession), the pronoun prompt
templates (train / test split of the verbs), and the product -> maker facts. `prepare_world` tokenizes it with a
word-level tokenizer, so every " word" is one token.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..atomic import replacing, write_json_atomic
from ..errors import BackpackError

TOPICS: dict[str, dict[str, list[str]]] = {
    "sports": dict(nouns=["player", "coach", "team", "runner", "captain"], adjectives=["fast", "tough", "eager", "skilled"],
                   verbs=["kicks", "catches", "throws", "passes", "tackles"],
                   objects=["ball", "goal", "net", "trophy", "whistle"]),
    "music": dict(nouns=["singer", "drummer", "pianist", "violinist", "choir"], adjectives=["loud", "gentle", "melodic", "famous"],
                  verbs=["sings", "plays", "hums", "tunes", "records"],
                  objects=["song", "melody", "chord", "album", "guitar"]),
    "space": dict(nouns=["astronaut", "rocket", "telescope", "comet", "probe"], adjectives=["distant", "bright", "orbital", "lunar"],
                  verbs=["launches", "orbits", "observes", "circles", "explores"],
                  objects=["planet", "galaxy", "moon", "asteroid", "nebula"]),
    "nature": dict(nouns=["fox", "deer", "owl", "rabbit", "squirrel"], adjectives=["wild", "quiet", "furry", "hungry"],
                   verbs=["eats", "hides", "digs", "climbs", "sniffs"],
                   objects=["tree", "river", "forest", "acorn", "meadow"]),
}

# word -> {topic: the continuation words of that meaning}; each word is shared by exactly two topics
POLYSEMOUS: dict[str, dict[str, list[str]]] = {
    "bat": {"sports": ["swings", "cracks", "strikes", "smashes"], "nature": ["flies", "squeaks", "roosts", "hunts"]},
    "pitch": {"sports": ["drains", "soaks", "hosts", "freezes"], "music": ["rises", "drops", "wavers", "bends"]},
    "star": {"music": ["performs", "tours", "signs", "dazzles"], "space": ["shines", "twinkles", "explodes", "burns"]},
    "ring": {"space": ["encircles", "glitters", "spins", "surrounds"], "sports": ["roars", "shakes", "empties", "fills"]},
    "scale": {"music": ["ascends", "descends", "modulates", "repeats"], "nature": ["glistens", "sheds", "peels", "shimmers"]},
}

# P(he | profession), from strongly skewed either way to balanced (names from the WinoBias occupation list)
PRONOUN_RATES: dict[str, float] = {
    "engineer": 0.95, "pilot": 0.9, "farmer": 0.85, "lawyer": 0.75, "doctor": 0.65,
    "teacher": 0.5, "baker": 0.5, "dancer": 0.3, "secretary": 0.15, "nurse": 0.05,
}
VERBS = ["said", "thought", "felt", "knew", "hoped", "believed", "claimed", "wrote"]
TEST_VERBS = 3  # the last verbs are held out: prompts built from them are the test set
STATES = ["tired", "ready", "late", "happy", "busy", "right"]

FACTS: dict[str, str] = {"phone": "acme", "laptop": "globex", "camera": "initech", "tablet": "vandelay"}

KIND_WEIGHTS = {"topic": 0.5, "people": 0.35, "facts": 0.15}


def topic_vocabulary(topic: str) -> list[str]:
    """Every word only this topic uses: its nouns, adjectives, verbs, objects and its meanings' continuations."""
    spec = TOPICS[topic]
    words = spec["nouns"] + spec["adjectives"] + spec["verbs"] + spec["objects"]
    return words + [w for meanings in POLYSEMOUS.values() for t, conts in meanings.items() if t == topic for w in conts]


def pronoun_templates() -> dict[str, list[str]]:
    """Prompt templates ("{}" = the profession) whose next token is the planted pronoun: train and test events differ."""
    prompts = [f"the {{}} {verb}" for verb in VERBS]
    return {"train": prompts[:-TEST_VERBS], "test": prompts[-TEST_VERBS:]}


def ground_truth(seed: int, n_documents: int) -> dict:
    return {
        "world": "senses",
        "seed": seed,
        "n_documents": n_documents,
        "topics": {t: {"vocabulary": topic_vocabulary(t), "polysemous": [w for w, m in POLYSEMOUS.items() if t in m]}
                   for t in TOPICS},
        "polysemous": {w: {t: {"continuations": conts, "topic_vocabulary": topic_vocabulary(t)} for t, conts in m.items()}
                       for w, m in POLYSEMOUS.items()},
        "pronouns": {"he": "he", "she": "she", "rates_he": PRONOUN_RATES, "templates": pronoun_templates()},
        "facts": {"template": "i bought the {}", "maker_of": FACTS},
        "document_kinds": KIND_WEIGHTS,
    }


def _topic_document(rng: random.Random, topic: str) -> str:
    spec = TOPICS[topic]
    shared = [w for w, m in POLYSEMOUS.items() if topic in m]
    sentences = []
    for _ in range(rng.randint(4, 6)):
        if shared and rng.random() < 0.4:
            word = rng.choice(shared)
            sentences.append(f"the {word} {rng.choice(POLYSEMOUS[word][topic])} the {rng.choice(spec['objects'])} .")
        else:
            sentences.append(f"the {rng.choice(spec['adjectives'])} {rng.choice(spec['nouns'])} "
                             f"{rng.choice(spec['verbs'])} the {rng.choice(spec['objects'])} .")
    return " ".join(sentences)


def _people_document(rng: random.Random) -> str:
    sentences = []
    for _ in range(4):
        profession = rng.choice(list(PRONOUN_RATES))
        pronoun = "he" if rng.random() < PRONOUN_RATES[profession] else "she"
        sentences.append(f"the {profession} {rng.choice(VERBS)} {pronoun} was {rng.choice(STATES)} .")
    return " ".join(sentences)


def _facts_document(rng: random.Random) -> str:
    sentences = []
    for _ in range(3):
        product = rng.choice(list(FACTS))
        form = rng.choice(["i bought the {} {} edition .", "the {} {} edition works well ."])
        sentences.append(form.format(product, FACTS[product]))
    return " ".join(sentences)


def generate_world(out_dir: str | Path, seed: int = 0, n_documents: int = 4000) -> dict:
    """Write out_dir/world.txt (one document per line) and out_dir/truth.json; return the truth dict.

    Deterministic: the same seed and size give byte-identical files.
    """
    if n_documents < 10:
        raise BackpackError(f"a world needs at least 10 documents, got {n_documents}")
    out = Path(out_dir)
    rng = random.Random(seed)
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    topics = list(TOPICS)
    lines = []
    for _ in range(n_documents):
        kind = rng.choices(kinds, weights)[0]
        if kind == "topic":
            lines.append(_topic_document(rng, rng.choice(topics)))
        elif kind == "people":
            lines.append(_people_document(rng))
        else:
            lines.append(_facts_document(rng))
    truth = ground_truth(seed, n_documents)
    missing = sorted(set(world_words(truth)) - {w for line in lines for w in line.split()})
    if missing:  # checked before anything is written: a world without them has no ground truth to check
        raise BackpackError(f"a world of {n_documents} documents leaves out {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}; generate more documents")
    out.mkdir(parents=True, exist_ok=True)
    with replacing(out / "world.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json_atomic(out / "truth.json", truth)
    return truth


def world_words(truth: dict) -> list[str]:
    """Every content word the truth names (each must be one token after `prepare_world`)."""
    words = {w for t in truth["topics"].values() for w in t["vocabulary"]} | set(truth["polysemous"])
    words |= set(truth["pronouns"]["rates_he"]) | {"he", "she"}
    words |= set(truth["facts"]["maker_of"]) | set(truth["facts"]["maker_of"].values())
    return sorted(words)


def load_truth(world_dir: str | Path) -> dict:
    """truth.json of a world folder; BackpackError unless it holds the parts the methods read (see ground_truth)."""
    path = Path(world_dir) / "truth.json"
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BackpackError(f"{path}: cannot read the world's ground truth ({err})") from None
    if not isinstance(truth, dict):
        raise BackpackError(f"{path}: not a world's ground truth (not a JSON object)")
    pronouns = truth.get("pronouns")
    needed = [(truth, key) for key in ("topics", "polysemous", "pronouns", "facts")]
    for holder, key in needed + [(pronouns, "rates_he"), (pronouns, "templates")]:
        if not isinstance(holder, dict) or not isinstance(holder.get(key), dict):
            raise BackpackError(f"{path}: not a world's ground truth (no {key} object)")
    return truth


def prepare_world(world_dir: str | Path, data_dir: str | Path) -> dict:
    """Tokenize the world with a word-level tokenizer (GPT-2 style " word" pieces), so every world word is one
    token (checked) and the vocabulary stays small; returns prepare_corpus's meta dict."""
    from ..data.prepare import prepare_corpus
    from ..data.tokenizers import load_tokenizer
    from ..senses.words import single_token_id

    meta = prepare_corpus([str(Path(world_dir) / "world.txt")], data_dir, tokenizer="word")
    tokenizer = load_tokenizer(Path(data_dir) / "tokenizer")
    missing = []
    for word in world_words(load_truth(world_dir)):
        try:
            single_token_id(tokenizer, word)
        except BackpackError:
            missing.append(word)
    if missing:
        raise BackpackError(f"the world is too small: {', '.join(missing[:5])} never occur(s); generate more documents")
    return meta
