"""Run EleutherAI lm-evaluation-harness on an in-memory model with heads and FFNs masked.

The masks are the hooks of `backpacklm.heads.gates.masking`, installed around `lm_eval.simple_evaluate`, so every
forward lm-eval makes (log-likelihoods and `generate()`) sees the masked model. The model goes to lm-eval's `HFLM`
as an object (no reload, no hub). Offline by default: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set for the call, so
a task whose data is not on disk fails instead of downloading.

`export_lm_eval_task` writes one of our tasks as an lm-eval task (JSONL + YAML) whose contexts are our k-shot
prompts, so lm-eval's 0-shot acc / acc_norm on it equal `evaluate_task`'s k-shot accuracy without / with
per-character normalisation.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..atomic import replacing
from ..errors import BackpackError
from .adapters import adapter_for
from .gates import check_ffn_mask, check_head_mask, masking
from .tasks import Task, few_shot_prompts

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass
class LmEvalResult:
    """metrics: task -> {metric name ("acc,none", "acc_norm,none", ...): value}; samples: task -> lm-eval's
    per-document records (log_samples=True; JSON-safe subset: doc_id, target, filtered_resps, and metric values)."""

    tasks: list[str]
    metrics: dict[str, dict[str, float]]
    num_fewshot: int | None
    limit: int | float | None
    masked_heads: int
    masked_ffns: int
    samples: dict[str, list[dict]] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbid Hugging Face hub and datasets downloads for the duration (env vars and, if imported, the libraries'
    module-level flags, which are read at import time)."""
    saved_env = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    flags = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
             ("datasets.config", "HF_DATASETS_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode")]
    saved_flags = []
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    for module_name, attr in flags:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr) and isinstance(getattr(module, attr), bool):
            saved_flags.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for module, attr, value in saved_flags:
            setattr(module, attr, value)


def lm_eval_evaluate(model, tokenizer, tasks: str | list[str], head_mask=None, ffn_mask=None,
                     include_path: str | Path | list | None = None, num_fewshot: int | None = None,
                     limit: int | float | None = None, batch_size: int = 8, log_samples: bool = False,
                     seed: int = 0, offline_only: bool = True) -> LmEvalResult:
    """lm-eval `tasks` on `model` with heads (head_mask [layers, heads], 1 keep / 0 remove) and FFN blocks
    (ffn_mask [layers]) masked. include_path: folder(s) of extra task YAMLs (e.g. from `export_lm_eval_task`)."""
    adapter = adapter_for(model)  # bad masks fail here, before lm-eval's slow start
    if head_mask is not None:
        check_head_mask(adapter, head_mask)
    if ffn_mask is not None:
        check_ffn_mask(adapter, ffn_mask)
    with offline() if offline_only else contextlib.nullcontext():
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager
        except ImportError as err:
            raise BackpackError(f"lm-eval is not installed ({err}); pip install 'backpacklm[eval]'") from None
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        if not names:
            raise BackpackError("no lm-eval task given")
        manager = _task_manager(TaskManager, [str(p) for p in _as_list(include_path)], names)
        unknown = [name for name in names if name not in manager.all_tasks]
        if unknown:
            raise BackpackError(f"unknown lm-eval task(s): {', '.join(unknown)}")
        # HFLM may set a pad token on the tokenizer it gets: give it a copy, so the caller's stays as it was.
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), backend="causal", batch_size=batch_size)
        was_training = model.training
        model.eval()
        try:
            with masking(model, head_mask=head_mask, ffn_mask=ffn_mask):
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                    log_samples=log_samples, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed,
                )
        finally:
            model.train(was_training)
    metrics = {task: {key: value for key, value in values.items() if isinstance(value, (int, float))}
               for task, values in out["results"].items()}
    samples = None
    if log_samples:
        samples = {task: [_sample_record(s) for s in records] for task, records in out["samples"].items()}
    return LmEvalResult(
        tasks=names, metrics=metrics, num_fewshot=num_fewshot, limit=limit,
        masked_heads=_count_removed(head_mask), masked_ffns=_count_removed(ffn_mask), samples=samples,
    )


def _task_manager(manager_class, include_path: list[str], names: list[str]):
    """Only the included tasks when they cover `names` (indexing lm-eval's thousands of built-in YAMLs takes
    seconds), else the included and the built-in ones."""
    if include_path:
        local = manager_class(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    return manager_class(include_path=include_path or None)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _count_removed(mask) -> int:
    if mask is None:
        return 0
    import torch

    return int((torch.as_tensor(mask) == 0).sum())


def _sample_record(sample: dict) -> dict:
    """JSON-safe fields of one lm-eval sample: doc id, target, the model's (filtered) responses, metric values."""
    record = {"doc_id": sample.get("doc_id"), "target": sample.get("target")}
    responses = sample.get("filtered_resps", [])
    record["responses"] = [list(r) if isinstance(r, (list, tuple)) else r for r in responses]
    for key, value in sample.items():
        if key not in record and isinstance(value, (int, float)) and not isinstance(value, bool):
            record[key] = value
    return json.loads(json.dumps(record, default=float))


def export_lm_eval_task(task: Task, folder: str | Path, k: int = 0, seed: int = 0, name: str | None = None) -> str:
    """Write `task` (multiple choice) as an lm-eval task in `folder`: <name>.jsonl whose contexts are our k-shot
    prompts, and <name>.yaml (dataset_path json, metrics acc and acc_norm). Returns the lm-eval task name."""
    if task.kind != "multiple_choice":
        raise BackpackError(f"task {task.name!r} is a generation task; only multiple-choice tasks export to lm-eval")
    name = name or f"backpack_{task.name}_{k}shot"
    if not name.replace("_", "").replace("-", "").isalnum():
        raise BackpackError(f"lm-eval task name must be letters, digits, '_' or '-', got {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    rows = [{"context": prompt, "choices": list(ex.choices), "gold": ex.gold}
            for prompt, ex in zip(few_shot_prompts(task, k, seed), task.examples)]
    with replacing(data) as tmp:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    config = {  # JSON is valid YAML, and escapes the delimiters exactly
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": task.target_delimiter,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    with replacing(folder / f"{name}.yaml") as tmp:
        tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return name
