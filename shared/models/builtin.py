"""Build-or-load the built-in tiny models (no downloads), cached under SCORE_HOME.

Layout under `home/models/`:
    builtin/tokenizer/   the one tokenizer every role shares (student and teacher need one vocabulary)
    builtin/<role>/      a Hugging Face checkpoint: config.json, model.safetensors,
                         generation_config.json, tokenizer files with the chat template
    .builtin.lock        serialises builds across processes

Each built directory carries `builtin.json`, a manifest with the hash of the recipe that made it.
A directory whose hash differs from the current recipe is rebuilt. Builds happen in a temporary
directory beside the target and are renamed into place, so a directory with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import time
import uuid
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer

from shared.agent.prompts import AFTER_PLAN, OBSERVATION_PREFIX, SYSTEM_PROMPT, TAGS
from shared.fsutil import atomic_directory, file_lock, remove_leftovers
from shared.models.pretrain import corpus_recipe, pretrain
from shared.models import induction, teacher_build
from shared.models.tiny import ROLE_SIZES, TINY_SIZES, build_tiny_model
from shared.models.tokenizer import CHATML_TEMPLATE, SPECIAL_TOKENS, train_tokenizer
from shared.settings import get_settings

logger = logging.getLogger("score.models")

# Built by `scripts/setup.sh` and the test fixtures, so a service starts at once.
ROLES = ("student", "teacher")
# Built on first use only, so fresh installs and CI do not pay for them: `builtin:teacher-sft`, a teacher
# fine-tuned at build time on expert trajectories and judge examples, which takes about 35 minutes on 2 cores
# (docs/teacher.md has what it solves); `builtin:student-wide`, a wider
# student whose cold start can learn which operation comes next, where the `nano` student stays at chance
# (docs/experiments.md, "Why the cold start fails"), at about twice the training cost per step.
ON_DEMAND_ROLES = ("teacher-sft", "student-wide")
MODELS = ROLES + ON_DEMAND_ROLES
# Bump when the way models or tokenizer are built changes in a way the recipe dicts do not capture.
RECIPE_VERSION = 1
VOCAB_SIZE = 2048
ROLE_SEEDS = {"student": 1, "teacher": 2, "teacher-sft": 2, "student-wide": 1}
# BPE training time grows with the corpus; a few MB already gives a stable 2k vocabulary.
MAX_CORPUS_CHARS = 4_000_000
MANIFEST = "builtin.json"
# Base-model pre-training on the generated copying corpus (shared/models/pretrain.py), per role; steps 0 skips it.
# Off for now: in the budget a fresh machine can afford (about 90 s on one thread, ~1M tokens) the nano student
# learns the corpus's wording but not content-based copying (teacher-forced digit accuracy on restated numbers
# stays at chance, 5-10%, for lr 3e-3 to 1e-2, batches of 1k-4k tokens, up to 1.5M tokens, wider heads, larger
# init). After SFT a student pre-trained 200 steps with these settings (~85 s) writes well-formed turns more
# often but solves no more held-out tasks, so the stage would cost every fresh build that time for little gain.
PRETRAIN: dict[str, dict] = {
    "student": {"steps": 0, "lr": 5e-3, "seed": 0, "batch_size": 16, "seq_len": 256},
    "teacher": {"steps": 0, "lr": 3e-3, "seed": 0, "batch_size": 16, "seq_len": 256},
    "teacher-sft": {"steps": 0},
    "student-wide": {"steps": 0},
}
# Induction pre-training (shared/models/induction.py): what makes the student able to copy numbers and names
# from its context once fine-tuned. Measured on one thread: ~400 steps reach >90% copy accuracy on the nano
# student (~35 s); 600 leave margin for seeds and slower machines. The teacher's 8-layer shape does not form
# the circuit in a build-time budget, so it is not pre-trained (the demo's teacher is the scripted expert); the
# three-layer `nano-wide3` of `teacher-sft` forms it in 1,000 steps.
INDUCTION: dict[str, dict] = {
    "student": {"steps": 600, "lr": 3e-3, "seed": 0, "batch_size": 32, "seq_len": 64, "segment": 10},
    "teacher": {"steps": 0},
    "teacher-sft": {"steps": 1000, "lr": 3e-3, "seed": 0, "batch_size": 32, "seq_len": 64, "segment": 10},
    "student-wide": {"steps": 1000, "lr": 3e-3, "seed": 0, "batch_size": 32, "seq_len": 64, "segment": 10},
}
# Build-time SFT on expert trajectories of distinct train-split tasks (shared/models/teacher_build.py); None
# skips it. `teacher-sft` is trained to solve the built-in suite by itself (docs/teacher.md has the numbers);
# the student is not: learning the suite is what the experiments measure.
SFT: dict[str, dict | None] = {
    "student": None,
    "teacher": None,
    # Three epochs, and kb episodes renamed with other names of the world (shared/models/kb_renaming.py), so
    # names are learnt by copying: one epoch of real episodes solved 25-88% arith and 3-49% kb of the same
    # validation tasks depending on the batch order; two renamed epochs 96-100% and 79-89%; three, 100% and 96%
    # (docs/models.md).
    "teacher-sft": {"tasks": {"arith": 4000, "kb": 3000}, "task_seed": 0, "epochs": 3.0, "lr": 1e-2,
                "batch_tokens": 2048, "warmup": 30, "seed": 1, "rename_kb": 1.0,
                # Then the `judge` strategy's two prompts (shared/models/judge_examples.py) on broken trajectories
                # of other train-split tasks, with agent episodes replayed so the agent turns are kept.
                # Sizes chosen on validation tasks (docs/teacher.md): 1,000 tasks a family found 25-28% of the broken
                # steps, 3,000 65%, 6,000 arith + 3,000 kb 82.5%. lr 6e-3 after the agent stage's third epoch:
                # 3e-3 then found 77.5% of validation breaks, 6e-3 86% (and kept the agent's validation success).
                # Replay of 3,000 episodes a family (all the agent stage's kb tasks): with 1,500 the judge stage cost
                # the agent 5 kb and 2.5 arith points of the 1,178 validation tasks a family (90.9% -> 85.9% kb);
                # with 3,000 kb rose to 94.5%, arith 97.2%, and the judge found 90% of validation breaks.
                "judge": {"tasks": {"arith": 6000, "kb": 3000}, "task_seed": 77, "break_seed": 5,
                          "replay": {"arith": 3000, "kb": 3000}, "epochs": 1.0, "lr": 6e-3, "batch_tokens": 8192,
                          "warmup": 20, "seed": 1, "threads": 2, "rename_kb": 1.0}},
    "student-wide": None,
}
# Checks at build time, per family: validation on train-split tasks of `task_seed` that the SFT did not use, and
# held-out on eval-split tasks (`held_out_seed`; reported only, never used to choose the recipe). Each scored as
# "greedy reproduces every expert turn" under teacher forcing: a lower bound on greedy success that runs no code.
SFT_VALIDATION = {"tasks_per_family": 100, "task_seed": 101, "held_out_seed": 0}
# The modules whose code shapes the SFT examples; their text is part of the recipe hash.
_SFT_SOURCES = ("shared.models.teacher_build", "shared.models.judge_examples", "shared.models.kb_renaming",
                "shared.agent.teacher_prompts", "shared.agent.format", "shared.agent.tokens")
PRETRAIN_THREADS = 1  # builds run beside services and tests; one thread keeps them from slowing each other
TOKENIZER_DIRNAME = "tokenizer"


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else get_settings().home


def builtin_model_dir(role: str, home: Path | None = None) -> Path:
    """Where the built-in model of `role` lives (built or not)."""
    if role not in MODELS:
        raise ValueError(f"unknown role {role!r}; built-in roles: {', '.join(MODELS)}")
    return _home(home) / "models" / "builtin" / role


# --- recipe ------------------------------------------------------------------------------------


def _cap_chars(texts: list[str], max_chars: int) -> list[str]:
    """Every k-th text, with k chosen so the total stays near `max_chars` (deterministic).

    Striding rather than truncating keeps every part of the corpus (questions, steps, documents)
    represented when the task suite grows.
    """
    total = sum(map(len, texts))
    stride = -(-total // max_chars)  # ceil
    return texts if stride <= 1 else texts[::stride]


@lru_cache(maxsize=1)
def tokenizer_training_texts() -> tuple[str, ...]:
    """The agent's fixed texts, then the built-in task corpus (capped in size)."""
    # Imported here: the task suite (knowledge base, generators) is only needed to build.
    from shared.tasks.builtin import tokenizer_corpus

    fixed = [SYSTEM_PROMPT, OBSERVATION_PREFIX, AFTER_PLAN, *TAGS]
    return tuple(fixed + _cap_chars(list(tokenizer_corpus()), MAX_CORPUS_CHARS))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# The corpus is generated by these modules; their text stands in for the corpus in the recipe hash,
# so checking that a build is current costs a few file reads, not generating ~4 MB of text (about 1 s)
# in every process that starts a service.
_CORPUS_SOURCES = ("shared.tasks.builtin", "shared.tasks.arith", "shared.tasks.kb", "shared.tasks.expert",
                   "shared.agent.prompts")


def _corpus_fingerprint(modules: tuple[str, ...] = _CORPUS_SOURCES) -> str:
    digest = hashlib.sha256()
    for module in modules:
        spec = importlib.util.find_spec(module)
        digest.update(module.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\0")
    return digest.hexdigest()


def _tokenizer_recipe() -> dict:
    return {
        "version": RECIPE_VERSION,
        "vocab_size": VOCAB_SIZE,
        "special_tokens": list(SPECIAL_TOKENS),
        "tags": list(TAGS),
        "chat_template": CHATML_TEMPLATE,
        # When the code that writes the corpus changes, the tokenizer is retrained.
        "corpus_sources_sha256": _corpus_fingerprint(),
        "max_corpus_chars": MAX_CORPUS_CHARS,
    }


def _model_recipe(role: str, tokenizer_hash: str) -> dict:
    size = ROLE_SIZES[role]
    recipe = {
        "version": RECIPE_VERSION,
        "role": role,
        "size": size,
        "shape": TINY_SIZES[size],
        "seed": ROLE_SEEDS[role],
        "tokenizer": tokenizer_hash,  # a retrained tokenizer invalidates every model built on it
    }
    settings = PRETRAIN[role]
    # Only a pre-trained recipe names the stage, so models built without one keep their hash and their cache.
    if settings["steps"] > 0:
        recipe["pretrain"] = {**settings, "corpus": corpus_recipe()}
    if INDUCTION[role]["steps"] > 0:
        recipe["induction"] = {**INDUCTION[role], "data_version": induction.DATA_VERSION}
    if SFT[role] is not None:
        recipe["sft"] = {**SFT[role], "data_version": teacher_build.DATA_VERSION,
                         "sources_sha256": _corpus_fingerprint(_SFT_SOURCES), "validation": SFT_VALIDATION}
    return recipe


def builtin_training_questions(role: str) -> set[str]:
    """The questions of the tasks the built-in `role` was fine-tuned on (empty without build-time SFT)."""
    settings = SFT[role]
    return set() if settings is None else builtin_training_questions_of(settings)


def builtin_training_questions_of(settings: dict) -> set[str]:
    """The questions of the tasks an SFT recipe trains on: agent episodes and, with a judge stage, its tasks."""
    tasks = teacher_build.training_tasks(settings["tasks"], settings["task_seed"])
    judge = settings.get("judge")
    if judge:
        tasks += teacher_build.training_tasks(judge["tasks"], judge["task_seed"])
        tasks += teacher_build.judge_replay_tasks(judge, settings["task_seed"])
    return {task.question for task in tasks}


def _validation_tasks(settings: dict, exclude: set[str]) -> dict[str, list]:
    return {family: teacher_build.unused_train_tasks(family, SFT_VALIDATION["tasks_per_family"], exclude=exclude,
                                                     seed=SFT_VALIDATION["task_seed"])
            for family in settings["tasks"]}


def _share(reproduced: list[bool]) -> dict:
    from shared.stats import wilson

    ok, n = sum(reproduced), len(reproduced)
    low, high = wilson(ok, n)
    return {"reproduced": ok, "n": n, "rate": round(ok / max(1, n), 4), "ci95": [round(low, 4), round(high, 4)]}


def _fine_tune(model, tokenizer, settings: dict) -> dict:
    """Build-time SFT of `model` on expert trajectories, then its validation; the manifest's `sft` entry."""
    started = time.perf_counter()
    tasks = teacher_build.training_tasks(settings["tasks"], settings["task_seed"])
    examples = teacher_build.agent_examples(tokenizer, tasks, rename_kb=settings.get("rename_kb", 0.0),
                                            seed=settings["seed"])
    logger.info("teacher SFT data: %d episodes, %d tokens (%.1fs)", len(examples),
                sum(len(ids) for ids, _ in examples), time.perf_counter() - started)
    trained = teacher_build.sft(model, examples, epochs=settings["epochs"], lr=settings["lr"], seed=settings["seed"],
                                batch_tokens=settings["batch_tokens"], warmup=settings["warmup"],
                                pad_id=tokenizer.pad_token_id, threads=PRETRAIN_THREADS)
    judge = settings.get("judge")
    if judge:
        trained["judge"] = teacher_build.judge_sft(model, tokenizer, judge, replay_task_seed=settings["task_seed"])
    from shared.tasks.builtin import builtin_tasks

    def reproduced_share(family_tasks) -> dict:
        examples = teacher_build.agent_examples(tokenizer, family_tasks)  # real names: what serving sees
        return _share(teacher_build.episodes_reproduced(model, examples, pad_id=tokenizer.pad_token_id,
                                                        threads=PRETRAIN_THREADS))

    unseen = _validation_tasks(settings, builtin_training_questions_of(settings))
    validation = {family: reproduced_share(family_tasks) for family, family_tasks in unseen.items()}
    held_out_tasks = {family: builtin_tasks(family=family, split="eval", n=SFT_VALIDATION["tasks_per_family"],
                                            seed=SFT_VALIDATION["held_out_seed"]) for family in settings["tasks"]}
    held_out = {family: reproduced_share(family_tasks) for family, family_tasks in held_out_tasks.items()}
    logger.info("teacher: greedy reproduces the expert on validation %s, held-out %s",
                {f: r["rate"] for f, r in validation.items()}, {f: r["rate"] for f, r in held_out.items()})
    checks = {"validation": validation, "held_out": held_out}
    if judge:
        from shared.models import judge_examples

        def verdicts_reproduced(family_tasks) -> dict:
            examples = judge_examples.training_examples(tokenizer, family_tasks, SFT_VALIDATION["task_seed"],
                                                        corrections=False)
            return _share(teacher_build.episodes_reproduced(model, examples, pad_id=tokenizer.pad_token_id,
                                                            threads=PRETRAIN_THREADS))

        checks["judge_validation"] = {family: verdicts_reproduced(family_tasks) for family, family_tasks in unseen.items()}
        checks["judge_held_out"] = {family: verdicts_reproduced(family_tasks)
                                    for family, family_tasks in held_out_tasks.items()}
        logger.info("teacher: greedy reproduces the judge's verdict on validation %s, held-out %s",
                    {f: r["rate"] for f, r in checks["judge_validation"].items()},
                    {f: r["rate"] for f, r in checks["judge_held_out"].items()})
    return {**trained, "settings": settings, **checks,
            "checks_note": "validation: train-split tasks the SFT did not use; held_out: eval-split tasks. An "
                           "episode counts when greedy decoding reproduces every expert turn given the expert's "
                           "observations (teacher-forced; a lower bound on greedy success). Greedy rollouts: "
                           "bench/teacher_model.py",
            "total_seconds": round(time.perf_counter() - started, 2)}


# --- manifests and atomic publication ----------------------------------------------------------


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_current(directory: Path, recipe_hash: str) -> bool:
    manifest = _read_manifest(directory)
    return manifest is not None and manifest.get("recipe_hash") == recipe_hash


def _write_manifest(directory: Path, **fields) -> None:
    fields.update(built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), build_id=uuid.uuid4().hex)
    (directory / MANIFEST).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


# --- builds ------------------------------------------------------------------------------------


def _build_tokenizer(target: Path, texts: tuple[str, ...], recipe_hash: str) -> None:
    started = time.perf_counter()
    logger.info("training the built-in tokenizer (vocab %d) on %d texts, %d chars",
                VOCAB_SIZE, len(texts), sum(map(len, texts)))
    tokenizer = train_tokenizer(texts, vocab_size=VOCAB_SIZE)
    with atomic_directory(target) as tmp:
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp, kind="tokenizer", vocab_size=len(tokenizer), recipe_hash=recipe_hash,
                        recipe_version=RECIPE_VERSION, texts=len(texts),
                        build_seconds=round(time.perf_counter() - started, 3))
    logger.info("built tokenizer (%d tokens) in %.2fs -> %s", len(tokenizer), time.perf_counter() - started, target)


def _build_model(role: str, target: Path, tokenizer_dir: Path, recipe: dict, recipe_hash: str) -> None:
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, padding_side="left")
    model = build_tiny_model(recipe["size"], tokenizer, seed=recipe["seed"])
    params = sum(p.numel() for p in model.parameters())
    pretrained = copying = fine_tuned = None
    if "induction" in recipe:
        settings = {k: v for k, v in recipe["induction"].items() if k != "data_version"}
        logger.info("induction pre-training of the built-in %s (%s) for %d steps", role, recipe["size"],
                    settings["steps"])
        copying = induction.pretrain_induction(model, tokenizer, threads=PRETRAIN_THREADS, **settings)
        logger.info("copy accuracy after induction pre-training: %.1f%% (%.1fs)", 100 * copying["copy_accuracy"],
                    copying["seconds"])
    if "pretrain" in recipe:
        settings = {k: v for k, v in recipe["pretrain"].items() if k != "corpus"}
        logger.info("pre-training the built-in %s (%s) for %d steps", role, recipe["size"], settings["steps"])
        pretrained = pretrain(model, tokenizer, threads=PRETRAIN_THREADS, **settings)
    if "sft" in recipe:
        logger.info("fine-tuning the built-in %s on expert trajectories", role)
        fine_tuned = _fine_tune(model, tokenizer, SFT[role])
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp, kind="model", role=role, size=recipe["size"], params=params, seed=recipe["seed"],
                        vocab_size=len(tokenizer), recipe_hash=recipe_hash, recipe_version=RECIPE_VERSION,
                        tokenizer_hash=recipe["tokenizer"], pretrain=pretrained, induction=copying, sft=fine_tuned,
                        build_seconds=round(time.perf_counter() - started, 3))
    logger.info("built %s model (%s, %.2fM params) in %.2fs -> %s",
                role, recipe["size"], params / 1e6, time.perf_counter() - started, target)


def copy_current_builtins(source_home: Path, target_home: Path) -> list[str]:
    """Copy the tokenizer and built-in models that are current in `source_home` (same recipe) into `target_home`
    where they are missing or stale; the names copied. A build is deterministic in its recipe, so a copy stands
    for a build (tests start from a fresh SCORE_HOME and would otherwise pay minutes of CPU for each)."""
    tokenizer_hash = _digest(_tokenizer_recipe())
    wanted = {TOKENIZER_DIRNAME: tokenizer_hash}
    wanted.update({role: _digest(_model_recipe(role, tokenizer_hash)) for role in MODELS})
    copied = []
    for name, recipe_hash in wanted.items():
        source = Path(source_home) / "models" / "builtin" / name
        target = Path(target_home) / "models" / "builtin" / name
        if _is_current(source, recipe_hash) and not _is_current(target, recipe_hash):
            with atomic_directory(target) as tmp:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
            copied.append(name)
    return copied


def is_current_builtin(role: str, home: Path | None = None) -> bool:
    """Whether `role` is built for its current recipe (so `ensure_builtin_model` returns at once)."""
    return _is_current(builtin_model_dir(role, home), _digest(_model_recipe(role, _digest(_tokenizer_recipe()))))


def ensure_builtin_model(role: str, home: Path | None = None) -> Path:
    """The built-in model directory of `role`, building it (and the shared tokenizer) if needed.

    Safe to call from several processes at once: one builds, the others wait and reuse it.
    """
    target = builtin_model_dir(role, home)
    root = target.parent
    tokenizer_hash = _digest(_tokenizer_recipe())
    recipe = _model_recipe(role, tokenizer_hash)
    recipe_hash = _digest(recipe)
    if _is_current(target, recipe_hash):  # the common case needs no lock
        return target

    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / ".builtin.lock"):
        if _is_current(target, recipe_hash):  # built by another process while we waited
            return target
        started = time.perf_counter()
        remove_leftovers(root)
        tokenizer_dir = root / TOKENIZER_DIRNAME
        if not _is_current(tokenizer_dir, tokenizer_hash):
            _build_tokenizer(tokenizer_dir, tokenizer_training_texts(), tokenizer_hash)
        _build_model(role, target, tokenizer_dir, recipe, recipe_hash)
        logger.info("built-in %s ready in %.2fs", role, time.perf_counter() - started)
    return target
