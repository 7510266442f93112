"""A packed batch trains exactly like its samples one by one, and samples never see each other.

Tiny Llama (hidden 32, 2 layers, 4 heads / 2 KV heads, vocab 256), fp32. The reference runs
each sample alone through the model with transformers' stock SDPA attention and the plain
`lm_head` + `cross_entropy`. Tolerances (fp32, only summation order differs): per-token
losses 1e-5 absolute; gradients rtol 1e-4, atol 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from train.attention import SDPA_SEGMENTS, choose_attention, flash_attn_available, register_attention  # noqa: E402
from train.data import IGNORE_INDEX, collate, labels_from_mask  # noqa: E402
from train.model import PackedCausalLM, build_model  # noqa: E402
from train.testing import TINY_MODEL  # noqa: E402

LENGTHS = (13, 41, 1, 7, 30)


def samples(seed: int = 0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, n).astype(np.int32), (rng.random(n) < 0.6).astype(np.uint8)) for n in lengths]


def tiny(attention: str = SDPA_SEGMENTS, **changes):
    register_attention()
    return build_model({**TINY_MODEL, **changes}, attention=attention, init_seed=0)


def one_by_one(model, pairs):
    """Per-token losses and the summed loss, each sample alone, stock SDPA, plain cross-entropy."""
    model.set_attn_implementation("sdpa")
    per_sample, total = [], 0
    for ids, mask in pairs:
        labels = torch.from_numpy(labels_from_mask(ids, mask))
        logits = model(input_ids=torch.from_numpy(ids.astype(np.int64))[None]).logits[0]
        losses = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        per_sample.append(losses.detach())
        total = total + losses.sum()
    model.set_attn_implementation(SDPA_SEGMENTS)
    return torch.cat(per_sample), total


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_batch_equals_its_samples_one_by_one(checkpointing: bool) -> None:
    model = tiny()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    pairs = samples()
    batch = collate(pairs)
    wrapper = PackedCausalLM(model, chunk_tokens=16)

    packed_tokens = wrapper.token_losses(batch)[0]
    packed = wrapper(batch)
    packed.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    reference_tokens, reference = one_by_one(model, pairs)
    reference.backward()

    torch.testing.assert_close(packed_tokens, reference_tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_a_sample_never_attends_to_another() -> None:
    """Changing every token of sample A leaves sample B's hidden states unchanged, and vice versa."""
    model = tiny()
    wrapper = PackedCausalLM(model)
    pairs = samples(1, (20, 20, 20))
    changed = [pairs[0], ((pairs[1][0] + 7) % 256, pairs[1][1]), pairs[2]]
    with torch.no_grad():
        before = wrapper.hidden_states(collate(pairs))[0]
        after = wrapper.hidden_states(collate(changed))[0]
    torch.testing.assert_close(before[:20], after[:20], rtol=0, atol=0)  # A: before the change
    torch.testing.assert_close(before[40:], after[40:], rtol=0, atol=0)  # C: after the change, still independent
    assert not torch.allclose(before[20:40], after[20:40])


def test_sdpa_per_segment_builds_no_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """No (T x T) tensor: SDPA gets no mask, every call is one sample's causal square."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape[2], k.shape[2], attn_mask, kwargs.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    wrapper = PackedCausalLM(tiny())
    with torch.no_grad():
        wrapper(collate(samples()))
    assert len(calls) == len(LENGTHS) * TINY_MODEL["num_hidden_layers"]
    assert all(mask is None and causal for _, _, mask, causal in calls)
    assert sorted({q for q, _, _, _ in calls}) == sorted(set(LENGTHS))


def test_attention_choice_on_cpu_is_sdpa_and_flash_is_refused() -> None:
    from train.errors import TrainConfigError

    assert choose_attention("auto", torch.device("cpu")).implementation == SDPA_SEGMENTS
    assert choose_attention("sdpa", torch.device("cpu")).path == "sdpa per sample segment"
    with pytest.raises(TrainConfigError, match="needs flash-attn and a CUDA device"):
        choose_attention("flash", torch.device("cpu"))


def test_every_registered_attention_builds_a_model_on_any_machine() -> None:
    """transformers refuses to build a model whose attention name looks like a hub kernel
    ("flash" in it): the GPU path must not fail at build time, where no test with a GPU ran."""
    from train.attention import FLASH_VARLEN, ULYSSES_FLASH_VARLEN, ULYSSES_SDPA_SEGMENTS

    for name in (FLASH_VARLEN, SDPA_SEGMENTS, ULYSSES_FLASH_VARLEN, ULYSSES_SDPA_SEGMENTS):
        assert tiny(name).config._attn_implementation == name


@pytest.mark.skipif(not flash_attn_available(), reason="needs flash-attn and a CUDA GPU")
def test_flash_varlen_matches_sdpa_per_segment_on_gpu() -> None:  # pragma: no cover - GPU only
    from train.attention import FLASH_VARLEN

    batch = collate(samples()).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        flash = PackedCausalLM(tiny(FLASH_VARLEN).cuda()).token_losses(batch)
        sdpa = PackedCausalLM(tiny(SDPA_SEGMENTS).cuda()).token_losses(batch)
    torch.testing.assert_close(flash, sdpa, rtol=0, atol=2e-2)  # bf16
