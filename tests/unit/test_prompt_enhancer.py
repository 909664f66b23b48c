"""The prompt enhancer (gpu_runner/families/ltx2/enhance.py) on the CPU: a tiny random Gemma-4 enhancer saved as a
model's prompt_enhancer/, run through the function the runner calls. Random weights: its words mean nothing, so
these check the plumbing (the bound, the progress, the determinism, the freeing, where the tokenizer comes from)."""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import Gemma4ForConditionalGeneration

from contract import library
from gpu_runner.demo.model import build_tokenizer
from gpu_runner.demo.text_extras import write_text_extras
from gpu_runner.families.ltx2.enhance import enhance_prompt

CPU = torch.device("cpu")


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def enhancer_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    write_text_extras(model_dir, build_tokenizer(), video_width=8, audio_width=4)
    return model_dir / library.PROMPT_ENHANCER


def live_enhancers() -> int:
    gc.collect()
    return sum(type(thing) is Gemma4ForConditionalGeneration for thing in gc.get_objects())


def test_it_generates_token_by_token_within_its_bound_and_frees_the_model(enhancer_dir):
    seen: list[tuple[int, int]] = []
    text = enhance_prompt(
        enhancer_dir, "a red ball bouncing", device=CPU, seed=7, max_new_tokens=12, on_token=lambda *a: seen.append(a)
    )
    assert isinstance(text, str)
    assert seen, "no progress was reported"
    assert [done for done, _ in seen] == list(range(1, len(seen) + 1))
    assert len(seen) <= 12 and {bound for _, bound in seen} == {12}
    assert live_enhancers() == 0


def test_the_same_prompt_and_seed_give_the_same_text(enhancer_dir):
    first = enhance_prompt(enhancer_dir, "a blue square moving left", device=CPU, seed=3, max_new_tokens=10)
    again = enhance_prompt(enhancer_dir, "a blue square moving left", device=CPU, seed=3, max_new_tokens=10)
    assert first == again


def test_what_the_progress_callback_raises_stops_the_generation_and_frees_the_model(enhancer_dir):
    def stop(done: int, _bound: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        enhance_prompt(enhancer_dir, "a white ball", device=CPU, seed=1, max_new_tokens=50, on_token=stop)
    assert live_enhancers() == 0


def test_the_tokenizer_may_be_the_models_processor(tmp_path):
    write_text_extras(tmp_path, build_tokenizer(), video_width=8, audio_width=4)
    enhancer = tmp_path / library.PROMPT_ENHANCER
    processor = tmp_path / "processor"
    processor.mkdir()
    for path in list(enhancer.iterdir()):
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            path.rename(processor / path.name)
    assert library.enhancer_tokenizer_dir(enhancer) == processor
    assert enhance_prompt(enhancer, "a green ball", device=CPU, seed=0, max_new_tokens=4) == enhance_prompt(
        enhancer, "a green ball", device=CPU, seed=0, max_new_tokens=4
    )


def test_the_runner_reports_the_tokens_now_and_then_and_stops_when_cancelled() -> None:
    import signal

    from contract import protocol
    from gpu_runner.cancel import Cancellation, Cancelled
    from gpu_runner.pipeline import TOKEN_EVENT_S, token_reporter

    emitted: list[protocol.Event] = []
    cancellation = Cancellation()
    now = [0.0]
    on_token = token_reporter(emitted.append, cancellation, clock=lambda: now[0])
    for done in range(1, 11):  # ten tokens, a fifth of the reporting interval apart
        on_token(done, 600)
        now[0] += TOKEN_EVENT_S / 5
    assert emitted == [protocol.Token(done=1, total=600), protocol.Token(done=6, total=600)]
    cancellation.signum = signal.SIGTERM
    with pytest.raises(Cancelled):
        on_token(11, 600)


def test_a_rewrite_is_kept_in_the_prompt_cache_under_its_model_prompt_seed_and_bound(tmp_path) -> None:
    from gpu_runner.cache_budget import GIB, Cache, CacheBudget, Limit
    from gpu_runner.prompt_cache import PromptCache

    cache = PromptCache(tmp_path, CacheBudget([Cache(tmp_path)], Limit(GIB, "AVP_CACHE_GB")))
    key = PromptCache.enhanced_key("ltx-2.5", "rev1", "a red ball", 7, 600)
    assert cache.get_text(key) is None
    rewrite = "Un ballon rouge rebondit — « clac », 12 fois."  # any text, whole
    cache.put_text(key, rewrite)
    assert cache.get_text(key) == rewrite
    cache.put_text(empty := PromptCache.enhanced_key("ltx-2.5", "rev1", "", 7, 600), "")
    assert cache.get_text(empty) == ""
    others = [
        PromptCache.enhanced_key("ltx-2.5-b", "rev1", "a red ball", 7, 600),  # another model
        PromptCache.enhanced_key("ltx-2.5", "rev2", "a red ball", 7, 600),  # its enhancer's files changed
        PromptCache.enhanced_key("ltx-2.5", "rev1", "a red ball.", 7, 600),
        PromptCache.enhanced_key("ltx-2.5", "rev1", "a red ball", 8, 600),
        PromptCache.enhanced_key("ltx-2.5", "rev1", "a red ball", 7, 300),  # a shorter bound cuts it elsewhere
    ]
    assert len({key, *others}) == 6 and all(cache.get_text(other) is None for other in others)
    encoded = PromptCache.key("ltx-2.5", "rev1", "a red ball", "", 7)
    assert cache.get_text(encoded) is None, "an encoded prompt's entry is never read as a rewrite"
