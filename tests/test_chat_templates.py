"""Per-turn fidelity through real chat templates: each trained turn is exactly what the model
generated, after exactly the prompt it was given, for every template family we ship.

The reference in these tests is the tokenizer's own `apply_chat_template` (Hugging Face's
public API), never our renderer: the prompt of turn i is the conversation up to i with the
generation prompt, and the generation is what the template adds for turn i as the final
message.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.chat_template import RenderError, chat_template, load_tokenizer, render_masked, tokenizer_info
from projections.tiny_tokenizer import FAMILIES

REASONING = ("glm45", "chatml", "qwen3", "chatml-generation")
"""Families whose templates have a place for reasoning (Llama 3's has none)."""

TOOLS = [{"type": "function", "function": {"name": "run_command", "description": "Run a shell command.",
                                            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]


def _call(turn: int, command: str) -> dict:
    return {"id": f"c{turn}", "type": "function", "function": {"name": "run_command", "arguments": {"command": command}}}


def _assistant(family: str, turn: int, text: str, reasoning: str, command: str | None) -> dict:
    message = {"role": "assistant", "content": text}
    if reasoning and family in REASONING:
        message["reasoning_content"] = reasoning
    if command is not None:
        message["tool_calls"] = [_call(turn, command)]
        if family == "llama3":
            message["content"] = ""  # Llama 3.1 writes a tool-call turn as the call alone
    return message


def _reference(tokenizer, messages: list[dict], index: int) -> tuple[str, str]:
    """(prompt, generation) of assistant message `index`, by the tokenizer's own template."""
    prompt = tokenizer.apply_chat_template(messages[:index], tools=TOOLS, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages[:index + 1], tools=TOOLS, tokenize=False)
    assert full.startswith(prompt)
    return prompt, full[len(prompt):]


def _trained_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _check_fidelity(tokenizer, messages: list[dict], train: list[bool]) -> list:
    pieces = render_masked(tokenizer, messages, TOOLS, train)
    template = chat_template(tokenizer)
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    flagged = [i for i, keep in zip(assistants, train) if keep]
    assert sorted(i for piece in pieces for i in piece.turns) == flagged  # each flagged turn trained once
    for piece in pieces:
        runs = _trained_runs(piece.mask)
        assert len(runs) == len(piece.turns)
        for index, (first, stop) in zip(piece.turns, runs):
            prompt, generation = _reference(tokenizer, messages, index)
            decoded_prefix = tokenizer.decode(piece.ids[:first].tolist(), skip_special_tokens=False)
            trained = tokenizer.decode(piece.ids[first:stop].tolist(), skip_special_tokens=False)
            assert decoded_prefix == prompt  # exactly the prompt the model was given
            ends = [e for e in template.turn_ends if e in generation]
            expected = generation[:min(generation.index(e) + len(e) for e in ends)] if ends else generation
            assert trained.startswith(expected)  # exactly what it generated ...
            assert trained[len(expected):] in ("",) + template.turn_ends  # ... and its end-of-turn token
            assert tokenizer.decode(piece.ids[stop - 1:stop].tolist(), skip_special_tokens=False) in template.turn_ends
        assert piece.mask[runs[-1][1]:].sum() == 0 and runs[-1][1] == len(piece.ids)  # a piece ends with its last trained turn
    return pieces


_text = st.text(alphabet=string.ascii_letters + string.digits + " .,:;!?()[]{}'\"\n_-+=/*#é漢🙂", min_size=0, max_size=30)


@st.composite
def conversations(draw, family: str):
    """System, task, then turns with tool calls and results, and human messages anywhere."""
    messages = [{"role": "system", "content": draw(_text)}, {"role": "user", "content": "task " + draw(_text)}]
    for turn in range(draw(st.integers(min_value=1, max_value=6))):
        command = draw(st.one_of(st.none(), _text))
        text = "w" + draw(_text)  # templates strip content; a word keeps the turn visible
        messages.append(_assistant(family, turn, text, draw(st.one_of(st.just(""), _text.map(lambda t: "r" + t))), command))
        if command is not None:
            messages.append({"role": "tool", "content": draw(_text), "tool_call_id": f"c{turn}"})
        else:
            messages.append({"role": "user", "content": "No tool was called."})
        if draw(st.integers(0, 3)) == 0:
            messages.append({"role": "user", "content": f"<real_user_message>\n{draw(_text)}\n</real_user_message>"})
    assistants = sum(m["role"] == "assistant" for m in messages)
    return messages, draw(st.lists(st.booleans(), min_size=assistants, max_size=assistants))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_trained_turn_is_its_generation_after_its_own_prompt(tokenizers, family):
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(case=conversations(family))
    def check(case):
        messages, train = case
        _check_fidelity(tokenizers[family], messages, train)

    check()


def test_an_untrained_turn_with_reasoning_between_trained_ones(tokenizers):
    """Found by the property above: under GLM-4.5, an untrained turn with reasoning sits
    between trained turns without; the trained turn right after it was given the reasoning,
    the one after the next human message was not. Each must get its own prompt."""
    user = {"role": "user", "content": "No tool was called."}
    plain = {"role": "assistant", "content": "w"}
    thinking = {"role": "assistant", "content": "w", "reasoning_content": "r",
                "tool_calls": [_call(2, "")]}
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "task"}, plain, user, user, plain, user, user,
                thinking, {"role": "tool", "content": "", "tool_call_id": "c2"}, plain, user, user, plain, user]
    pieces = _check_fidelity(tokenizers["glm45"], messages, [True, True, False, True, True])
    assert sorted(turn for piece in pieces for turn in piece.turns) == [2, 5, 10, 13]


def _segment_with_guidance(family: str, stop: bool = False) -> list[dict]:
    """Three turns with reasoning, a person's guidance after the second, a final answer (or a stop)."""
    messages = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Train the classifier."}]
    for turn, command in enumerate(["ls", "python train.py"]):
        messages.append(_assistant(family, turn, f"Step {turn}.", f"THOUGHT-{turn}", command))
        messages.append({"role": "tool", "content": f"output {turn}", "tool_call_id": f"c{turn}"})
    messages.append({"role": "user", "content": "<real_user_message>\nUse a smaller learning rate.\n</real_user_message>"})
    messages.append(_assistant(family, 2, "Lowering it.", "THOUGHT-2", "python train.py --lr 1e-4"))
    messages.append({"role": "tool", "content": "output 2", "tool_call_id": "c2"})
    if stop:
        messages.append({"role": "user", "content": "<real_user_message>\nStop here.\n</real_user_message>"})
    return messages


@pytest.mark.parametrize("stop", [False, True])
def test_glm_keeps_the_reasoning_of_turns_before_a_human_message(tokenizers, stop):
    tokenizer = tokenizers["glm45"]
    messages = _segment_with_guidance("glm45", stop)
    pieces = _check_fidelity(tokenizer, messages, [True, True, True])
    trained = [tokenizer.decode(p.ids[p.mask == 1].tolist(), skip_special_tokens=False) for p in pieces]
    for turn in range(3):
        assert sum(f"<think>THOUGHT-{turn}</think>" in t for t in trained) == 1
    assert "<think></think>" not in "".join(trained)
    # two pieces: turns 0-1 before the guidance, turn 2 after it (its prompt has them without reasoning)
    assert [p.turns for p in pieces] == [(2, 4), (7,)]
    assert "THOUGHT-0" not in tokenizer.decode(pieces[1].ids[pieces[1].mask == 0].tolist(), skip_special_tokens=False)


def test_qwen3_trains_the_empty_think_block_of_a_turn_without_reasoning(tokenizers):
    tokenizer = tokenizers["qwen3"]
    messages = _segment_with_guidance("qwen3")
    del messages[2]["reasoning_content"]
    pieces = _check_fidelity(tokenizer, messages, [True, True, True])
    first = next(p for p in pieces if 2 in p.turns)
    assert tokenizer.decode(first.ids[first.mask == 1].tolist(), skip_special_tokens=False).startswith("<think>\n\n</think>\n\nStep 0.")


def test_a_generation_template_gives_huggingface_assistant_masks(tokenizers):
    tokenizer = tokenizers["chatml-generation"]
    messages = _segment_with_guidance("chatml-generation")
    [piece] = render_masked(tokenizer, messages, TOOLS, [True, True, True])
    ours = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    # Hugging Face's mask stops at the final turn's block; ours ends the sequence there too.
    ids = ours["input_ids"][:len(piece.ids)]
    assert piece.ids.tolist() == ids and piece.mask.tolist() == ours["assistant_masks"][:len(piece.ids)]


SPECIALS = sorted({token for family in FAMILIES.values() for token in family["special"]})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_special_token_strings_in_content_stay_plain_text(tokenizers, family):
    tokenizer = tokenizers[family]
    hostile = " ".join(SPECIALS)
    messages = _segment_with_guidance(family)
    for message in messages:
        if message["role"] in ("system", "user", "tool") or message.get("content"):
            message["content"] = f"{message['content']} {hostile}"
        if message.get("reasoning_content"):
            message["reasoning_content"] += f" {hostile}"
        for call in message.get("tool_calls", []):
            call["function"]["arguments"]["command"] += f" {hostile}"
    clean = json.loads(json.dumps(messages).replace(json.dumps(hostile)[1:-1], "plain words"))
    pieces = render_masked(tokenizer, messages, TOOLS, [True, True, True])
    reference = _check_fidelity(tokenizer, clean, [True, True, True])
    special_ids = set(tokenizer.all_special_ids)
    for piece, plain in zip(pieces, reference, strict=True):
        assert piece.turns == plain.turns
        # the template's own special tokens, and not one more
        assert sorted(i for i in piece.ids.tolist() if i in special_ids) == sorted(i for i in plain.ids.tolist() if i in special_ids)
        for mask in (1, 0):  # trained and untrained text alike, with the hostile strings as written
            ours = tokenizer.decode(piece.ids[piece.mask == mask].tolist(), skip_special_tokens=False)
            assert ours.replace(hostile, "plain words") == tokenizer.decode(plain.ids[plain.mask == mask].tolist(), skip_special_tokens=False)
        assert piece.text.count(hostile) >= 3


def test_llama3_refuses_what_its_template_cannot_write(tokenizers):
    tokenizer = tokenizers["llama3"]
    messages = _segment_with_guidance("llama3")
    _check_fidelity(tokenizer, messages, [True, True, True])
    messages[2]["reasoning_content"] = "hidden"
    with pytest.raises(RenderError, match="leaves the turn's reasoning out") as caught:
        render_masked(tokenizer, messages, TOOLS, [True, True, True])
    assert caught.value.message_index == 2
    messages[2].pop("reasoning_content")
    messages[2]["tool_calls"].append(_call(9, "ls"))
    with pytest.raises(RenderError, match="only supports single tool-calls"):
        render_masked(tokenizer, messages, TOOLS, [True, True, True])


def test_chatml_content_starting_with_blank_lines_trains_as_generated(tokenizers):
    tokenizer = tokenizers["chatml"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nAnswer."}]
    [piece] = _check_fidelity(tokenizer, messages, [True])
    assert tokenizer.decode(piece.ids[piece.mask == 1].tolist(), skip_special_tokens=False) == "\n\nAnswer.<|im_end|>"


def test_a_tokenizer_from_the_hugging_face_cache(tmp_path, tokenizer_dirs):
    """A hub id loads through transformers' cache, offline, and the manifest gets its revision.

    In a fresh process: the hub library reads its cache settings from the environment at import.
    """
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--example--glm-mini"
    shutil.copytree(tokenizer_dirs["glm45"], repo / "snapshots" / revision)
    (repo / "snapshots" / revision / "config.json").write_text('{"model_type": "glm4_moe"}')  # a model repo has one
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = (
        "import json, msgspec; from projections.chat_template import RenderError, load_tokenizer, tokenizer_info\n"
        "t = load_tokenizer('example/glm-mini')\n"
        "try:\n    load_tokenizer('example/absent'); missing = ''\nexcept RenderError as e:\n    missing = str(e)\n"
        "print(json.dumps({'template': t.chat_template, 'info': msgspec.to_builtins(tokenizer_info('example/glm-mini')),"
        " 'missing': missing}))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["template"] == load_tokenizer(tokenizer_dirs["glm45"]).chat_template
    assert (result["info"]["name"], result["info"]["revision"]) == ("example/glm-mini", revision)
    assert result["info"]["hash"] == tokenizer_info(tokenizer_dirs["glm45"]).hash
    assert "hub id" in result["missing"]
