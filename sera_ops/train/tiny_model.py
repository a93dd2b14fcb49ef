"""The offline base model: a tiny Qwen3 and a ByteLevel BPE tokenizer built from the dataset itself.

A run without a `base_model` trains on one of these, so nothing is ever downloaded (tests, the demo, the benchmark),
yet rendering, masking, LoRA targets, saving and reloading are exactly those of a Qwen3 run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from sera_ops.train.records import CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START, PAD, SPECIAL_TOKENS

# Qwen3 shapes measured in agent-and-models.md Part 2: ~1.05M and ~9.97M parameters with tied embeddings.
TINY_MODEL_SIZES: dict[str, dict[str, int]] = {
    "1m": {"vocab_size": 2048, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 384},
    "10m": {"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 10, "num_attention_heads": 8,
            "num_key_value_heads": 4, "intermediate_size": 768},
}
TINY_MODEL_MAX_POSITIONS = 32768  # SERA's sequence_len, so the default max_seq_len needs no clamping on tiny models
TINY_MODEL_SEED = 0


def build_tiny_model(output_dir: Path, corpus: Iterable[str], *, size: Literal["1m", "10m"] = "1m") -> Path:
    """Train a ByteLevel BPE tokenizer on `corpus` and save it with a randomly initialised Qwen3 of `size`.

    This is the offline stand-in for a real base model: the tokenizer has ChatML's special tokens and chat template,
    so the whole training path (rendering, masking, LoRA targets, saving, reloading) is the one a Qwen3 run takes.
    The weights come from a fixed seed, without touching the caller's RNG state.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

    if size not in TINY_MODEL_SIZES:
        raise ValueError(f"size must be one of {sorted(TINY_MODEL_SIZES)}, got {size!r}")
    shape = TINY_MODEL_SIZES[size]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=shape["vocab_size"], special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD, extra_special_tokens=[IM_START, END_OF_TEXT],
        model_max_length=TINY_MODEL_MAX_POSITIONS, chat_template=CHATML_TEMPLATE)
    config = Qwen3Config(
        **{**shape, "vocab_size": len(tokenizer)},
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        max_position_embeddings=TINY_MODEL_MAX_POSITIONS, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_MODEL_SEED)
        model = AutoModelForCausalLM.from_config(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
