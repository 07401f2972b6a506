"""Tiny vision-language backbones built offline for the VLA tests: configs, processor and a local tokenizer."""

from __future__ import annotations

from pathlib import Path

# Words of the synthesized datasets' tasks; anything else is <unk> (the tests only need token ids).
_WORDS = [
    "pick",
    "place",
    "the",
    "cube",
    "and",
    "it",
    "in",
    "into",
    "box",
    "bin",
    "move",
    "to",
    "up",
    "a",
    "\n",
]
_SPECIALS = ["<unk>", "<pad>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
_SPECIALS += ["<global-img>"]


def build_smolvlm(out: Path) -> Path:
    """A SmolVLM with a 2-layer, 32-wide text model and a 1-layer vision tower for 32x32 images, saved to `out`.

    Its tokenizer is a word-level one built with the `tokenizers` library; smolVLA takes the folder as
    `vlm_model_name` (config, processor and tokenizer are read from it, nothing from the Hub).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.smolvlm import (
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    vocab = {t: i for i, t in enumerate(_SPECIALS + _WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        # smolVLA reads fake_image_token_id and global_image_token_id off the tokenizer.
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
        },
    )
    size = {"longest_edge": 32}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=size, max_image_size=size, do_image_splitting=False),
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        tokenizer=tokenizer,
        image_seq_len=1,
    )
    processor.save_pretrained(out)
    text = {"model_type": "llama", "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64}
    text |= {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision |= {"image_size": 32, "patch_size": 16}
    SmolVLMConfig(
        image_token_id=vocab["<image>"],
        scale_factor=2,
        vocab_size=len(vocab),
        text_config={**text, "pad_token_id": vocab["<pad>"]},
        vision_config=vision,
    ).save_pretrained(out)
    return out


def tiny_smolvla(vlm: Path) -> dict:
    """smolVLA policy options for `vlm`: 32x32 images, chunks of 5, state and action padded to 8."""
    return {
        "vlm_model_name": str(vlm),
        "resize_imgs_with_padding": [32, 32],
        "chunk_size": 5,
        "n_action_steps": 5,
        "num_vlm_layers": 2,
        "tokenizer_max_length": 8,
        "max_state_dim": 8,
        "max_action_dim": 8,
        "num_steps": 2,
    }
