"""A synthetic instruction world: Alpaca-format data whose instructions a tiny model can learn.

Every example applies one task (or a composition of two) to a short sequence of distinct letters, written with
spaces between them (`c a e b`), so that ROUGE-L over its word tokens gives partial credit letter by letter.
The tasks (`TASKS`):

    reverse        c a e b -> b e a c          sort          c a e b -> a b c e
    repeat         c a e   -> c a e c a e      every_second  c a e b -> c e
    replace X Y    c a e b -> c y e b (X=a)    count         c a e b -> 4
    first          c a e b -> c                last          c a e b -> b
    second         c a e b -> a                third         c a e b -> e
    min            c a e b -> a                max           c a e b -> e

Each task has several phrasings; a composition joins two phrasings with a connective ("..., then ..."). The splits
hold ground truth by construction (Mu et al. 2023 evaluate on seen / unseen instructions the same way):

    train, seen          seen tasks and compositions, seen phrasings; seen examples never repeat a train example
    unseen_phrasing      every instruction uses a held-out phrasing of a seen task (in a seen composition, if any)
    unseen_composition   task pairs never composed in train, with seen phrasings
    long                 seen instructions wrapped in a verbose preamble and closing (50+ words; savings checks)

Which phrasing ids (the same for every task) and compositions are held out is drawn from the seed. `ground_truth.json` records, per example
and in split order, its tasks, parameters, phrasing ids and connective, plus the tables they index.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import BackpackError

# phrasings: `{src}` / `{dst}` are the replace task's symbols
PHRASINGS: dict[str, list[str]] = {
    # reverse, sort and the one-symbol tasks (LENGTH_MATCHED): four words each, phrasing i of the same length in
    # characters for all seven
    "reverse": [
        "flip the letter order",
        "reverse all the letters",
        "turn the sequence around",
        "say the letters backwards",
        "write them in reverse",
    ],
    "sort": [
        "arrange them in order",
        "give the sorted letters",
        "write the sorted letters",
        "write the sequence sorted",
        "list letters in order",
    ],
    "repeat": [
        "repeat the letters twice",
        "write the sequence two times",
        "say the letters and then say them again",
        "double the sequence",
        "copy the letters two times in a row",
    ],
    "every_second": [
        "take every second letter",
        "keep the first, third and fifth letters",
        "skip every other letter",
        "drop the letters in even positions",
        "keep only the odd positions",
    ],
    "replace": [
        "replace {src} with {dst}",
        "change every {src} into {dst}",
        "write {dst} wherever there is {src}",
        "swap each {src} for {dst}",
        "turn the letter {src} into {dst}",
    ],
    "count": [
        "give the letter count",
        "say the sequence length",
        "name the sequence length",
        "state the sequence length",
        "tell the letter count",
    ],
    "first": [
        "give the first letter",
        "say the leftmost letter",
        "write the opening letter",
        "state the leftmost letter",
        "tell the first letter",
    ],
    "second": [
        "say the second letter",
        "write the second letter",
        "choose the second letter",
        "provide the second letter",
        "say letter number two",
    ],
    "third": [
        "give the third letter",
        "say letter number three",
        "name letter number three",
        "write letter number three",
        "pick the third letter",
    ],
    "last": [
        "give the final letter",
        "say the trailing letter",
        "write the closing letter",
        "write the trailing letter",
        "write the last letter",
    ],
    "min": [
        "give the least letter",
        "say the smallest letter",
        "name the earliest letter",
        "write the smallest letter",
        "tell the least letter",
    ],
    "max": [
        "give the greatest one",
        "say the greatest letter",
        "write the highest letter",
        "report the largest letter",
        "say the latest letter",
    ],
}
TASKS = tuple(PHRASINGS)
REDUCERS = ("count", "first", "second", "third", "last", "min", "max")  # one-symbol outputs: only ever the last task of a composition
# Phrasing i of each of these tasks has the same number of characters, and all have four words, so a task drawn from
# them cannot be read off the instruction's length (which models with absolute positions see through the input's
# position ids, even when a mask hides the instruction itself, as in neg_control); with a word-level tokenizer every
# single instruction among them has the same length, and a composition's length depends only on its connective.
LENGTH_MATCHED = ("reverse", "sort") + REDUCERS
POSITIONS = {"first": 0, "second": 1, "third": 2, "last": -1}  # the positional one-symbol tasks' index
CONNECTIVES = ["{a}, then {b}", "first {a}; after that {b}", "{a} and then {b}"]
PREAMBLES = [  # 50+ word pieces and 300-400 characters around the instruction (the savings checks' long prompts)
    "Read the letters below, which are written on one line with a single space between each pair of neighbouring "
    "letters, and look at every one of them from the start of the line to its end before you answer. Then "
    "{instruction}. Answer with the result only, on one line, with no other words and no explanation.",
    "Some letters follow, one space apart, in a single line. Take your time and read all of them with care, since "
    "every letter may matter for the answer that you give. When you have read them all, {instruction}. Reply with "
    "nothing but the answer itself: no extra words, no reasons, and no comments around it.",
]
REPLACEMENTS = "xyz"  # replace targets never occur in inputs


@dataclass
class InstructionWorldConfig:
    """What to generate. `tasks` is a subset of `TASKS`; compositions pair two different tasks, a reducer (one-symbol
    output: count, first, last, min, max) only last."""

    seed: int = 0
    n_train: int = 4000
    n_eval: int = 200  # per evaluation split
    tasks: tuple[str, ...] = TASKS
    letters: str = "abcdefgh"
    min_len: int = 3
    max_len: int = 6
    composite_fraction: float = 0.3  # of train / seen / unseen_phrasing examples
    unseen_phrasings: int = 1  # held-out phrasings per task
    unseen_compositions: float = 0.25  # fraction of the possible task pairs held out

    def validate(self) -> None:
        if unknown := [t for t in self.tasks if t not in PHRASINGS]:
            raise BackpackError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks) or not self.tasks:
            raise BackpackError("tasks must be a non-empty list without repeats")
        if not 1 <= self.min_len <= self.max_len <= len(self.letters):
            raise BackpackError(f"need 1 <= min_len <= max_len <= {len(self.letters)} (distinct letters)")
        if self.min_len < 3 and {"second", "third"} & set(self.tasks):
            raise BackpackError("tasks second and third need min_len >= 3")
        if set(self.letters) & set(REPLACEMENTS) or not self.letters.isalpha() or not self.letters.islower():
            raise BackpackError(f"letters must be distinct lowercase letters without {REPLACEMENTS}")
        if not 1 <= self.unseen_phrasings < len(PHRASINGS[TASKS[0]]):
            raise BackpackError(f"unseen_phrasings must be in 1..{len(PHRASINGS[TASKS[0]]) - 1}")
        if not 0.0 <= self.composite_fraction <= 1.0 or not 0.0 < self.unseen_compositions < 1.0:
            raise BackpackError("composite_fraction must be in [0, 1] and unseen_compositions in (0, 1)")
        if self.n_train < 1 or self.n_eval < 1:
            raise BackpackError("n_train and n_eval must be positive")


@dataclass
class Step:
    """One task application: the task, its phrasing id (index into PHRASINGS[task]) and parameters."""

    task: str
    phrasing: int
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class InstructionWorld:
    """The examples per split (Alpaca dicts) and, aligned with them, what each one is."""

    config: InstructionWorldConfig
    splits: dict[str, list[dict[str, str]]]
    truth: dict[str, list[dict]]  # split -> [{"tasks", "params", "phrasings", "connective", "long"}]
    seen_phrasings: dict[str, list[int]]
    unseen_phrasings: dict[str, list[int]]
    seen_compositions: list[tuple[str, str]]
    unseen_compositions: list[tuple[str, str]]

    def ground_truth(self) -> dict:
        return {
            "config": asdict(self.config),
            "tasks": list(self.config.tasks),
            "phrasings": {t: PHRASINGS[t] for t in self.config.tasks},
            "seen_phrasings": self.seen_phrasings,
            "unseen_phrasings": self.unseen_phrasings,
            "connectives": CONNECTIVES,
            "preambles": PREAMBLES,
            "seen_compositions": [list(p) for p in self.seen_compositions],
            "unseen_compositions": [list(p) for p in self.unseen_compositions],
            "examples": self.truth,
        }


def apply_task(task: str, letters: list[str], params: dict[str, str]) -> list[str]:
    """The task's output (a list of symbols; `count` gives one symbol, the number)."""
    if task == "reverse":
        return letters[::-1]
    if task == "sort":
        return sorted(letters)
    if task == "repeat":
        return letters + letters
    if task == "every_second":
        return letters[::2]
    if task == "replace":
        return [params["dst"] if x == params["src"] else x for x in letters]
    if task == "count":
        return [str(len(letters))]
    if task in POSITIONS:
        return [letters[POSITIONS[task]]]
    if task in ("min", "max"):
        return [min(letters) if task == "min" else max(letters)]
    raise BackpackError(f"unknown task {task!r}")


def _possible_pairs(tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    """(a, b): a is not a reducer; every_second (which may leave two letters) is never followed by third."""
    return [(a, b) for a in tasks for b in tasks
            if a != b and a not in REDUCERS and (a, b) != ("every_second", "third")]


def _split_pairs(pairs: list[tuple[str, str]], fraction: float, rng: random.Random):
    """Hold out about `fraction` of the pairs, keeping every task in some seen pair (so only the pairing is new)."""
    order = pairs[:]
    rng.shuffle(order)
    held: list[tuple[str, str]] = []
    want = max(1, round(fraction * len(pairs))) if len(pairs) > 1 else 0
    for pair in order:
        if len(held) == want:
            break
        rest = [p for p in pairs if p not in held and p != pair]
        if {t for p in rest for t in p} == {t for p in pairs for t in p}:
            held.append(pair)
    return [p for p in pairs if p not in held], held


class _Sampler:
    def __init__(self, config: InstructionWorldConfig, rng: random.Random):
        self.config, self.rng = config, rng

    def letters(self) -> list[str]:
        n = self.rng.randint(self.config.min_len, self.config.max_len)
        return self.rng.sample(list(self.config.letters), n)

    def steps(self, tasks: tuple[str, ...], phrasings: dict[str, list[int]], letters: list[str]) -> list[Step]:
        out, current = [], letters
        for task in tasks:
            params = {}
            if task == "replace":  # replace a letter that is there at this point
                params = {"src": self.rng.choice(current), "dst": self.rng.choice(REPLACEMENTS)}
            out.append(Step(task, self.rng.choice(phrasings[task]), params))
            current = apply_task(task, current, params)
        return out


def _instruction(steps: list[Step], connective: int | None) -> str:
    parts = [PHRASINGS[s.task][s.phrasing].format(**s.params) for s in steps]
    if len(parts) == 1:
        return parts[0]
    return CONNECTIVES[connective].format(a=parts[0], b=parts[1])


def _example(steps: list[Step], letters: list[str], connective: int | None, preamble: int | None):
    out = letters
    for s in steps:
        out = apply_task(s.task, out, s.params)
    instruction = _instruction(steps, connective)
    if preamble is not None:
        instruction = PREAMBLES[preamble].format(instruction=instruction)
    else:
        instruction = instruction[0].upper() + instruction[1:] + "."
    record = {"instruction": instruction, "input": " ".join(letters), "output": " ".join(out)}
    truth = {
        "tasks": [s.task for s in steps],
        "params": [s.params for s in steps],
        "phrasings": [s.phrasing for s in steps],
        "connective": connective,
        "long": preamble is not None,
    }
    return record, truth


def generate_instruction_world(config: InstructionWorldConfig | None = None) -> InstructionWorld:
    """Deterministic in `config` (including its seed)."""
    config = config or InstructionWorldConfig()
    config.validate()
    rng = random.Random(config.seed)
    seen_ph, unseen_ph = {}, {}
    ids = list(range(len(PHRASINGS[TASKS[0]])))
    rng.shuffle(ids)  # the same phrasing ids are held out for every task (length-matched tasks stay matched)
    for task in config.tasks:
        unseen_ph[task] = sorted(ids[: config.unseen_phrasings])
        seen_ph[task] = sorted(ids[config.unseen_phrasings :])
    all_ph = {t: seen_ph[t] + unseen_ph[t] for t in config.tasks}
    seen_pairs, unseen_pairs = _split_pairs(_possible_pairs(config.tasks), config.unseen_compositions, rng)
    sampler = _Sampler(config, rng)

    def draw(kind: str):
        letters = sampler.letters()
        composite = kind == "unseen_composition" or (seen_pairs and rng.random() < config.composite_fraction)
        if kind == "unseen_composition":
            tasks = rng.choice(unseen_pairs)
        elif composite:
            tasks = rng.choice(seen_pairs)
        else:
            tasks = (rng.choice(config.tasks),)
        phrasings = all_ph if kind == "unseen_phrasing" else seen_ph
        steps = sampler.steps(tasks, phrasings, letters)
        if kind == "unseen_phrasing" and all(s.phrasing in seen_ph[s.task] for s in steps):
            i = rng.randrange(len(steps))  # at least one held-out phrasing
            steps[i].phrasing = rng.choice(unseen_ph[steps[i].task])
        connective = rng.randrange(len(CONNECTIVES)) if len(steps) > 1 else None
        preamble = rng.randrange(len(PREAMBLES)) if kind == "long" else None
        return _example(steps, letters, connective, preamble)

    splits: dict[str, list] = {}
    truth: dict[str, list] = {}
    used: set[tuple[str, str]] = set()
    plan = [("train", config.n_train), ("seen", config.n_eval), ("unseen_phrasing", config.n_eval)]
    plan += [("unseen_composition", config.n_eval)] if unseen_pairs else []
    plan += [("long", config.n_eval)]
    for kind, n in plan:
        splits[kind], truth[kind] = [], []
        tries = 0
        while len(splits[kind]) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise BackpackError(f"cannot draw {n} distinct '{kind}' examples: widen letters or lengths")
            record, info = draw(kind)
            key = (record["instruction"], record["input"])
            if kind == "seen" and key in used:
                continue  # seen-eval examples are new (instruction, input) pairs
            if kind == "train":
                used.add(key)
            splits[kind].append(record)
            truth[kind].append(info)
    return InstructionWorld(config, splits, truth, seen_ph, unseen_ph, seen_pairs, unseen_pairs)


def write_instruction_world(world: InstructionWorld, out: Path) -> dict[str, Path]:
    """Writes `{split}.json` (Alpaca format: a list of {instruction, input, output}) and `ground_truth.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in world.splits.items():
        paths[split] = out / f"{split}.json"
        write_json_atomic(paths[split], records)
    paths["ground_truth"] = out / "ground_truth.json"
    write_json_atomic(paths["ground_truth"], world.ground_truth())
    return paths
