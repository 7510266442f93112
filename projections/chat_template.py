"""Rendering conversations through a model's own chat template, with the loss mask.

The rule (docs/DESIGN.md §8): each trained assistant turn is trained on exactly the tokens
the model generated, after exactly the prompt it was given; every other token has mask 0.

Rendering a conversation once is not enough, because templates rewrite history: GLM-4.5
and Qwen3 drop the reasoning of assistant turns before the last user message, and Qwen3
writes an empty think block only on the final turn. Rendered once, every turn before a
human's guidance would be trained without the reasoning the model produced. So:

1. **Each trained turn's generation** is rendered alone, as the final turn after one user
   message: what the model produced, in the template's own words (`_Generation`). Its
   reasoning, text and tool names must all be there; a template that drops them even then
   (DeepSeek-R1 drops reasoning always) cannot train them, and the conversation fails.
2. **Pieces, built from the end.** Render the conversation up to the last trained turn not
   yet placed; every such turn whose text there equals its own generation is trained in
   this piece, the others wait for a shorter piece. A piece ends with its last trained
   turn. A turn is also placed only if the piece starts with its own prompt. Turns before
   every rewritten one have theirs; after a rewritten turn, a turn's prompt holds once the
   messages since have rewritten it too, which only grows with later turns, so within each
   stretch between rewritten turns a binary search over rendered prompts finds the turns
   whose prompt holds. For GLM-4.5 a guidance message mid-segment gives two pieces, the
   earlier one a prefix of the later one (the token overhead `bench/projection.py` measures).
3. **Content is data.** Special-token strings inside messages (a tool output that prints
   a tokenizer config, say) are escaped before rendering, so the template cannot mistake
   them for its own, and are tokenized as plain text. Only the template's own special
   tokens become special ids.
4. **Tokens as the server saw them.** The text is cut at the template's special tokens and
   at both ends of every trained span, and each part is tokenized alone: the prompt and the
   generation never share a token. Trained tokens must decode to exactly their span.

Turns are located by the `{% generation %}` blocks of templates that have them (what
`return_assistant_tokens_mask` uses), otherwise by the assistant header the template
writes for `add_generation_prompt`. A template that puts no end-of-turn token after a
turn (GLM-4.5 lets the next role token end it) gets the token it puts there when one
follows: `<|observation|>` after tool calls, `<|user|>` otherwise.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from apollo_es.errors import ApolloError

__all__ = [
    "ChatTemplate",
    "RenderError",
    "Rendered",
    "TokenizerInfo",
    "chat_template",
    "load_tokenizer",
    "render_masked",
    "render_masked_many",
    "tokenizer_hash",
    "tokenizer_info",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

TURN_ENDS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|return|>", "<|call|>", "<|observation|>", "<|user|>",
    "<|endoftext|>", "<end_of_turn>", "</s>", "<｜end▁of▁sentence｜>",
)
"""Tokens that end a generated turn in the families we know; those a template uses count."""

_USER = {"role": "user", "content": "Go on."}
_PROBE_CALL = {"role": "assistant", "content": "Looking.", "tool_calls": [
    {"id": "call_0", "type": "function", "function": {"name": "run_command", "arguments": {"command": "ls"}}}]}
_PROBE_TEXT = {"role": "assistant", "content": "Done."}
_PROBE_RESULT = {"role": "tool", "content": "README.md", "tool_call_id": "call_0"}

# Special-token strings in content become single characters of Unicode plane 16 (private
# use) while the template renders; a plane-16 character already in the content is kept by
# prefixing it with the last one.
_ESCAPES = 0x100000
_LITERAL = "\U0010FFFD"


class RenderError(ApolloError):
    """A tokenizer or conversation that cannot be rendered into a correct masked sample."""

    def __init__(self, message: str, *, message_index: int | None = None) -> None:
        super().__init__(message)
        self.message_index = message_index
        """The conversation message it is about, where it is about one."""


class Rendered(msgspec.Struct, frozen=True):
    """One token sequence of a conversation: `messages[:messages]` rendered, `turns` trained."""

    text: str
    ids: np.ndarray
    mask: np.ndarray
    messages: int
    turns: tuple[int, ...]
    """Indices (into the conversation) of the assistant messages trained here."""


class TokenizerInfo(msgspec.Struct, frozen=True):
    """Where a tokenizer came from, for the manifest."""

    name: str
    revision: str | None
    hash: str
    path: str


class _Generation(msgspec.Struct, frozen=True):
    text: str
    ends: bool
    """Whether `text` already ends with the template's end-of-turn token."""


class ChatTemplate:
    """A tokenizer's chat template, analysed once: its control tokens, how turns start and end."""

    def __init__(self, tokenizer: Any) -> None:
        source = tokenizer.chat_template
        if not isinstance(source, str) or not source:
            raise RenderError("the tokenizer has no chat template; add chat_template.jinja or set it in tokenizer_config.json")
        self.tokenizer = tokenizer
        self.source = source
        self.generation_tags = re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None
        self._kwargs = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        backend = tokenizer.backend_tokenizer
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(tokenizer.all_special_tokens)
        specials = sorted(specials, key=len, reverse=True)
        if len(specials) >= 0xFFFD:
            raise RenderError(f"{len(specials)} special tokens: too many to escape")
        self._escape_of = {s: chr(_ESCAPES + i) for i, s in enumerate(specials)}
        self._special_of = {v: k for k, v in self._escape_of.items()}
        self._escape_re = re.compile("|".join([*map(re.escape, specials), "[\U00100000-\U0010FFFD]"]))
        self._unescape_re = re.compile(f"{_LITERAL}(.)|([\U00100000-\U0010FFFC])", re.DOTALL)
        control = [s for s in specials if s in source or s in self._kwargs.values()]
        self._control_re = re.compile("|".join(map(re.escape, control))) if control else None
        self._control_ids = {s: backend.token_to_id(s) for s in control}
        self.turn_ends = tuple(s for s in dict.fromkeys((*TURN_ENDS, tokenizer.eos_token)) if s in control)
        self._encoder = type(backend).from_str(backend.to_str())
        self._encoder.encode_special_tokens = True  # content never becomes a special token
        prompt, plain = self._render([_USER], None, generation_prompt=True), self._render([_USER], None)
        self.header = prompt[len(plain):] if prompt.startswith(plain) else ""
        if not self.generation_tags and not (self._control_re and self._control_re.search(self.header)):
            raise RenderError(
                f"cannot find assistant turns: the template's generation prompt {self.header!r} holds no special token "
                "and it has no {% generation %} blocks"
            )
        self._closings = {key: self._closing(turn, follower)
                          for key, turn, follower in (("call", _PROBE_CALL, _PROBE_RESULT), ("text", _PROBE_TEXT, _USER))}
        self._self_test()

    # -- rendering --------------------------------------------------------------------

    def _render(self, messages: Sequence[dict], tools: Sequence[dict] | None, *, generation_prompt: bool = False,
                indices: bool = False) -> Any:
        from jinja2 import TemplateError
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            texts, spans = render_jinja_template(
                [list(messages)], tools=list(tools) if tools else None, chat_template=self.source,
                add_generation_prompt=generation_prompt, return_assistant_tokens_mask=indices, **self._kwargs,
            )
        except (TemplateError, TypeError, ValueError) as exc:
            raise RenderError(f"the chat template failed: {exc}") from exc
        return (texts[0], spans[0]) if indices else texts[0]

    def _turn_starts(self, text: str, generation: list[tuple[int, int]] | None) -> list[int]:
        if generation is not None:
            return [begin for begin, _ in generation]
        starts, at = [], text.find(self.header)
        while at != -1:
            starts.append(at + len(self.header))
            at = text.find(self.header, at + len(self.header))
        return starts

    def _rendered_turns(self, messages: Sequence[dict], tools: Sequence[dict] | None) -> tuple[str, dict[int, int]]:
        """The text of `messages` and where each assistant message's generated part starts."""
        if self.generation_tags:
            text, generation = self._render(messages, tools, indices=True)
        else:
            text, generation = self._render(messages, tools), None
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        starts = self._turn_starts(text, generation)
        if len(starts) != len(assistants):
            raise RenderError(f"the template rendered {len(starts)} assistant turns for {len(assistants)} assistant messages")
        return text, dict(zip(assistants, starts))

    def generation(self, message: dict, index: int) -> _Generation:
        """`message` (escaped) as the template writes it when the model has just generated it."""
        if self.generation_tags:
            full, spans = self._render([_USER, message], None, indices=True)
            text = full[spans[-1][0]:spans[-1][1]] if spans else ""
        else:
            prompt, full = self._render([_USER], None, generation_prompt=True), self._render([_USER, message], None)
            if not full.startswith(prompt):
                raise RenderError("the template writes a final assistant turn differently from its generation prompt",
                                  message_index=index)
            text = full[len(prompt):]
        ends = False
        for match in self._controls(text):
            if match.group() in self.turn_ends:
                text, ends = text[:match.end()], True
                break
        parts = [("reasoning", message.get("reasoning_content")), ("text", message.get("content"))]
        parts += [("tool call", (c.get("function") or c).get("name")) for c in message.get("tool_calls") or []]
        for name, part in parts:
            if isinstance(part, str) and part.strip() and part.strip() not in text:
                raise RenderError(
                    f"the chat template leaves the turn's {name} out even when it is the final turn, so it cannot be "
                    "trained on what the model generated", message_index=index)
        return _Generation(text, ends)

    def _generation_or_none(self, message: dict, index: int) -> _Generation | None:
        """`generation` for a turn that is not trained: None where the template cannot write it."""
        try:
            return self.generation(message, index)
        except RenderError:
            return None

    def _closing(self, turn: dict, follower: dict) -> str:
        """The end-of-turn token the template writes after `turn` when `follower` comes next."""
        alone, followed = self._render([_USER, turn], None), self._render([_USER, turn, follower], None)
        if followed.startswith(alone):
            match = self._control_re.match(followed, len(alone)) if self._control_re else None
            if match and match.group() in self.turn_ends:
                return match.group()
        return self.tokenizer.eos_token or ""

    def _controls(self, text: str) -> Iterator[re.Match[str]]:
        return self._control_re.finditer(text) if self._control_re else iter(())

    # -- escaping ---------------------------------------------------------------------

    def escape(self, value: Any) -> Any:
        """`value` with every special-token string in its strings (not roles) made inert."""
        if isinstance(value, str):
            return self._escape_re.sub(self._escape_one, value)
        if isinstance(value, dict):
            return {self.escape(k): (v if k == "role" else self.escape(v)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.escape(v) for v in value]
        return value

    def _escape_one(self, match: re.Match[str]) -> str:
        found = match.group()
        return self._escape_of.get(found) or _LITERAL + found

    def unescape(self, text: str) -> str:
        return self._unescape_re.sub(lambda m: m.group(1) or self._special_of[m.group(2)], text)

    # -- pieces and tokens ------------------------------------------------------------

    def pieces(self, messages: Sequence[dict], tools: Sequence[dict] | None, train: Sequence[bool]) -> list[tuple[str, int, list[tuple[int, int, int]]]]:
        """(escaped text, messages covered, trained spans as (message, begin, end)) per piece, in order."""
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if len(train) != len(assistants):
            raise RenderError(f"{len(train)} train flags for {len(assistants)} assistant messages")
        messages, tools = self.escape(list(messages)), self.escape(list(tools or []))
        pending = [i for i, keep in zip(assistants, train) if keep]
        generations: dict[int, _Generation | None] = {i: self.generation(messages[i], i) for i in pending}
        pieces = []
        while pending:
            last = pending[-1]
            text, starts = self._rendered_turns(messages[:last + 1], tools)

            def as_generated(i: int) -> bool:
                if i not in generations:  # an untrained turn: only needed to see whether it was rewritten
                    generations[i] = self._generation_or_none(messages[i], i)
                generated = generations[i]
                return generated is not None and text.startswith(generated.text, starts[i])

            rewritten = [i for i in starts if not as_generated(i)]
            placed = [i for i in pending if i not in rewritten]
            if last not in placed:
                raise RenderError(
                    f"as the final turn the template writes {text[starts[last]:starts[last] + 80]!r}, its own rendering of "
                    f"the generation is {generations[last].text[:80]!r}", message_index=last)
            placed = self._with_their_prompts(messages, tools, text, starts, placed, rewritten)
            spans = []
            for i in placed:
                begin, end = starts[i], starts[i] + len(generations[i].text)
                if not generations[i].ends:
                    match = self._control_re.match(text, end) if self._control_re else None
                    if match and match.group() in self.turn_ends:
                        end = match.end()
                    elif end == len(text):
                        text += self._closings["call" if messages[i].get("tool_calls") else "text"]
                        end = len(text)
                spans.append((i, begin, end))
            pieces.append((text[:spans[-1][2]], last + 1, spans))  # what follows the last trained turn teaches nothing
            pending = [i for i in pending if i not in placed]
        return pieces[::-1]

    def _with_their_prompts(self, messages: list[dict], tools: list[dict], text: str, starts: dict[int, int],
                            placed: list[int], rewritten: list[int]) -> list[int]:
        """The turns of `placed` whose own prompt `text` starts with.

        Later messages rewrite how earlier turns render (a user message makes GLM-4.5 drop the
        reasoning of the turns before it): `rewritten` are the turns `text` does not show as
        generated. A turn before all of them has its prompt in `text` as it was. After one of
        them, the prompt holds once the turns that came between have rewritten it too, which
        only grows with later turns: within each stretch between rewritten turns the turns
        whose prompt holds are the last ones, found by a binary search over rendered prompts.
        """
        def prompt_holds(turn: int) -> bool:
            return self._render(messages[:turn], tools, generation_prompt=True) == text[:starts[turn]]

        if not prompt_holds(placed[-1]):
            raise RenderError("the template writes the conversation before this turn differently once the turn "
                              "follows it", message_index=placed[-1])
        kept = []
        for stretch, turns in itertools.groupby(placed, key=lambda turn: bisect.bisect(rewritten, turn)):
            turns = list(turns)
            if stretch == 0:
                kept += turns
                continue
            low, high = 0, len(turns)  # turns[high:] hold; turns[len(turns)] stands for "none"
            while low < high:
                middle = (low + high) // 2
                if prompt_holds(turns[middle]):
                    high = middle
                else:
                    low = middle + 1
            kept += turns[low:]
        return kept

    def _parts(self, text: str, cuts: Sequence[int]) -> list[tuple[int, int, bool]]:
        """`text` (escaped) cut at its control tokens and at `cuts`: (start, end, is a control token)."""
        bounds = {0, len(text), *cuts}
        controls = {}
        for match in self._controls(text):
            bounds.update(match.span())
            controls[match.start()] = match.end()
        ordered = sorted(bounds)
        return [(a, b, controls.get(a) == b) for a, b in zip(ordered, ordered[1:])]

    def tokenize(self, items: Sequence[tuple[str, Sequence[tuple[int, int]]]]) -> list[tuple[str, np.ndarray, list[tuple[int, int]]]]:
        """Tokenize escaped texts, cut at their trained spans, in one batch.

        Gives (unescaped text, ids, the token range of each span) per item.
        """
        split = [self._parts(text, [x for span in spans for x in span]) for text, spans in items]
        plain = [self.unescape(text[a:b]) for (text, _), parts in zip(items, split) for a, b, control in parts if not control]
        encoded = iter(zip(plain, self._encoder.encode_batch(plain, add_special_tokens=False)))
        out = []
        for (text, spans), parts in zip(items, split):
            ids, texts, token_at = [], [], {}
            count = 0
            for a, b, control in parts:
                token_at[a] = count
                if control:
                    ids.append(np.asarray([self._control_ids[text[a:b]]], dtype=np.int32))
                    texts.append(text[a:b])
                else:
                    part, encoding = next(encoded)
                    ids.append(np.asarray(encoding.ids, dtype=np.int32))
                    texts.append(part)
                count += len(ids[-1])
            token_at[len(text)] = count
            out.append(("".join(texts), np.concatenate(ids) if ids else np.zeros(0, np.int32),
                        [(token_at[begin], token_at[end]) for begin, end in spans]))
        return out

    def _self_test(self) -> None:
        """Tokenizing between special tokens must give what tokenizing the whole text gives."""
        text = self._render([_USER, _PROBE_CALL, _PROBE_RESULT, _PROBE_TEXT], None)
        whole = self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        _, ours, _ = self.tokenize([(text, [])])[0]
        if ours.tolist() != whole:
            raise RenderError("this tokenizer encodes text between special tokens differently from the whole text "
                              "(a prefix space?); it is not supported")

    def check(self, escaped: str, ids: np.ndarray, spans: Sequence[tuple[int, int, int]], ranges: Sequence[tuple[int, int]]) -> None:
        """Each trained span's tokens decode to exactly that span's text."""
        for (message, begin, end), (first, stop) in zip(spans, ranges):
            turn = self.unescape(escaped[begin:end])
            decoded = self.tokenizer.decode(ids[first:stop].tolist(), skip_special_tokens=False,
                                            clean_up_tokenization_spaces=False)
            if decoded != turn:
                raise RenderError(f"trained tokens decode to {decoded[:80]!r}, the turn reads {turn[:80]!r}",
                                  message_index=message)


@functools.lru_cache(maxsize=8)
def chat_template(tokenizer: Any) -> ChatTemplate:
    """The analysed template of `tokenizer` (once per tokenizer)."""
    return ChatTemplate(tokenizer)


def render_masked(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                  train: Sequence[bool]) -> list[Rendered]:
    """The token sequences that train the assistant turns flagged in `train`, each after its own prompt."""
    return render_masked_many(tokenizer, [(messages, tools, train)])[0]


def render_masked_many(tokenizer: Any, conversations: Sequence[tuple[Sequence[dict], Sequence[dict] | None, Sequence[bool]]]) -> list[list[Rendered]]:
    """`render_masked` for many conversations, tokenized in one batch (on every core)."""
    template = chat_template(tokenizer)
    pieces = [template.pieces(messages, tools, train) for messages, tools, train in conversations]
    flat = [piece for conversation in pieces for piece in conversation]
    tokens = iter(template.tokenize([(text, [(b, e) for _, b, e in spans]) for text, _, spans in flat]))
    out = []
    for conversation in pieces:
        rendered = []
        for escaped, count, spans in conversation:
            text, ids, ranges = next(tokens)
            template.check(escaped, ids, spans, ranges)
            mask = np.zeros(len(ids), dtype=np.uint8)
            for first, stop in ranges:
                mask[first:stop] = 1
            rendered.append(Rendered(text=text, ids=ids, mask=mask, messages=count, turns=tuple(i for i, _, _ in spans)))
        out.append(rendered)
    return out


# -- tokenizers ---------------------------------------------------------------------------


def load_tokenizer(name: str | Path) -> Any:
    """A fast tokenizer with a chat template: a local directory, or a Hugging Face hub id.

    A hub id is loaded through `transformers`' cache, so `HF_HUB_OFFLINE=1` uses only what
    is already downloaded.
    """
    from transformers import AutoTokenizer

    path = Path(name)
    local = path.is_dir()
    if not local and not _looks_like_hub_id(str(name)):
        raise RenderError(f"tokenizer directory {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name), local_files_only=local)
    except (OSError, ValueError) as exc:
        where = "" if local else " (not a local directory; looked it up as a Hugging Face hub id)"
        raise RenderError(f"cannot load a tokenizer from {name}{where}: {str(exc).splitlines()[0]}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise RenderError(f"{name}: a fast tokenizer (tokenizer.json) is needed")
    if not tokenizer.chat_template:
        raise RenderError(f"{name}: the tokenizer has no chat template; add chat_template.jinja or set it in tokenizer_config.json")
    try:
        chat_template(tokenizer)
    except RenderError as exc:
        raise RenderError(f"{name}: {exc}") from exc
    return tokenizer


def _looks_like_hub_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None and not os.path.exists(name)


def tokenizer_info(name: str | Path) -> TokenizerInfo:
    """Name, revision and hash of the tokenizer `load_tokenizer(name)` loads."""
    path = Path(name)
    revision = None
    if not path.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name), "tokenizer_config.json")
        if not isinstance(cached, str):
            raise RenderError(f"{name}: not a directory, and not in the Hugging Face cache")
        path = Path(cached).parent
        revision = path.name  # snapshots/<commit>/
    return TokenizerInfo(name=str(name), revision=revision, hash=tokenizer_hash(path), path=str(path.resolve()))


def tokenizer_hash(path: str | Path) -> str:
    """SHA-256 over the tokenizer's files present among TOKENIZER_FILES, by name, in that order.

    The trainer computes the same over its model's tokenizer, so a dataset is never trained
    with a tokenizer that did not make it.
    """
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        file = Path(path) / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()
