"""Small byte-level BPE tokenizers with real chat templates, built locally.

Nothing can be downloaded here, so tests and the demo build their tokenizers: a byte-level
BPE (every string encodes, and decodes back exactly) trained on a small corpus, the special
tokens of a model family, and that family's chat template from `projections/templates/`.
Training is deterministic, so the same call gives the same files (and tokenizer hash).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["FAMILIES", "build_tiny_tokenizer"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

FAMILIES = {
    "glm45": {
        "special": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|endoftext|>"],
        "added": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>",
                  "<arg_value>", "</arg_value>", "<tool_response>", "</tool_response>"],
        "eos": "<|endoftext|>",
    },
    "chatml": {
        "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        "added": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
        "eos": "<|im_end|>",
    },
    "qwen3": {
        "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        "added": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
        "eos": "<|im_end|>",
    },
    "llama3": {
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|eom_id|>", "<|python_tag|>", "<|reserved_special_token_0|>"],
        "added": [],
        "eos": "<|eot_id|>",
        "bos": "<|begin_of_text|>",
        "pad": "<|end_of_text|>",
    },
    "chatml-generation": {
        "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        "added": ["<think>", "</think>", "<tool_call>", "</tool_call>"],
        "eos": "<|im_end|>",
    },
}

_CORPUS = """The agent reads the file, runs the command and checks the output.
def train(model, data, learning_rate=0.001): return model.fit(data)
python3 train.py --epochs 10 --batch-size 32 && python3 eval.py
validation accuracy 0.8633 loss 0.4121 step 1200 of 5000
{"name": "run_command", "arguments": {"command": "ls -la"}}
Traceback (most recent call last): File "train.py", line 12, in <module>
I will summarize the progress so far, the hypotheses and the experiments.
"""


def build_tiny_tokenizer(out_dir: str | Path, family: str = "glm45", vocab_size: int = 600) -> Path:
    """Write a fast tokenizer for `family` (one of FAMILIES) with its chat template to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: use {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=spec["special"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=spec["eos"], bos_token=spec.get("bos"),
                                   pad_token=spec.get("pad", "<|endoftext|>"))
    if spec["added"]:
        fast.add_tokens(spec["added"])
    fast.chat_template = (TEMPLATES / f"{family}.jinja").read_text()
    out_dir = Path(out_dir)
    fast.save_pretrained(str(out_dir))
    return out_dir


if __name__ == "__main__":  # python -m projections.tiny_tokenizer OUT_DIR [FAMILY]
    import sys

    print(json.dumps({"path": str(build_tiny_tokenizer(sys.argv[1], *(sys.argv[2:3])))}))
