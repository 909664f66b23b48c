"""The prompt cache and the FP8 weight cache keep one model's entries apart from another's, even where the two
directories hold the same files: the prompt cache keys by the model's id (its directory's name), the weight cache
by the component's resolved directory."""

from __future__ import annotations

import shutil

import torch

from contract import jobdir
from contract.models import offered_models
from contract.request import Request
from gpu_runner.families import family_for
from gpu_runner.job import load_job
from gpu_runner.pipeline import cache_budget_for, prompt_cache_for
from gpu_runner.weight_cache import WeightCache


def test_two_library_models_with_the_same_files_get_their_own_prompt_and_weight_cache_entries(
    version_model_dirs, tmp_path
):
    library = tmp_path / "models"
    for name in ("ltx-a", "ltx-b"):
        shutil.copytree(version_model_dirs["2.0"], library / name)
    models = offered_models(library / "demo", library, None).models
    options = jobdir.RunnerOptions(prompt_cache_dir=str(tmp_path / "prompts"), weight_cache_dir=str(tmp_path / "w"))
    cache = None  # the weight cache under the budget the runner builds from the first job's file

    prompt_keys, weight_entries = {}, {}
    for model_id in ("ltx-a", "ltx-b", "ltx-a"):
        spec = models[model_id]
        job_dir = tmp_path / "jobs" / model_id
        job_dir.mkdir(parents=True, exist_ok=True)
        request = spec.resolve(Request(prompt="a red ball", width=128, height=96, num_frames=9), seed=1)
        jobdir.write_job_file(job_dir, jobdir.job_file(model_id, request, spec, options))
        job = load_job(job_dir)
        budget = cache_budget_for(job)
        cache = cache or WeightCache(tmp_path / "w", budget)
        _, key = prompt_cache_for(job, family_for(job, cache), budget)
        entry = cache.entry(job.model_dir / "transformer", torch.bfloat16).path
        assert prompt_keys.setdefault(model_id, key) == key and weight_entries.setdefault(model_id, entry) == entry

    assert prompt_keys["ltx-a"] != prompt_keys["ltx-b"]
    assert weight_entries["ltx-a"] != weight_entries["ltx-b"]
