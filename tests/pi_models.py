"""Tiny π0 / π0.5 / π0-FAST models built offline: a PaliGemma-style tokenizer and lerobot's variants shrunk.

lerobot 0.6.1 builds the π models' PaliGemma and Gemma expert from a fixed variant table
(`get_gemma_config`: `gemma_300m`, `gemma_2b`), hard-codes PaliGemma's 257,152-token vocabulary and
SigLIP-So400m vision tower, and (π0, π0.5) loads PaliGemma's tokenizer by its Hub id. No config field
makes them small, so `install` patches exactly those names in lerobot's modules: the variant table,
the two model classes (shrinking the vocabulary and vision tower they are built with) and the
tokenizer lookup of the one Hub id. Everything else (lerobot's factory, processors, training
forward, `from_pretrained`, `select_action`) runs unchanged.

A `piperctl` process started for a test gets the same patch: `piperctl_start(..., setup=(install, (tokenizer,)))`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

PALIGEMMA_ID = "google/paligemma-3b-pt-224"
# The tiny Gemma every variant becomes (PaliGemma's language model and the action expert alike); 8 heads
# because lerobot's joint attention reshapes to 8 * head_dim.
TINY_GEMMA = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 8, "num_kv_heads": 1, "head_dim": 4}
# A 1-layer SigLIP for 32x32 images in 16x16 patches: 4 image tokens (π0-FAST's SigLIP is always
# built for 224x224 in lerobot 0.6.1, whatever image_resolution says: the tiny one takes 32x32).
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_VISION |= {"patch_size": 16, "image_size": 32}

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
# Words of the synthesized tasks and of the π prompts ("Task: ..., State: 12 200;\nAction: "), the
# 256 state bins π0.5 writes as numbers, and "|", π0-FAST's end-of-action token.
_WORDS = ["pick", "place", "the", "cube", "and", "it", "in", "into", "box", "bin", "move", "to", "up", "a"]
_WORDS += ["Task", "State", "Action", ":", ",", ";", "|", "\n"] + [str(i) for i in range(256)]


def build_paligemma_tokenizer(out: Path) -> Path:
    """A word-level tokenizer with PaliGemma's special tokens, built with `tokenizers` and saved to `out`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(_SPECIALS + _WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Words, numbers and punctuation apart; "\n" kept as a token (the π prompts end their task with it).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\n"), "isolated"), pre_tokenizers.Whitespace()]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    ).save_pretrained(out)
    return out


def vocab_size() -> int:
    """The tiny tokenizer's vocabulary size: the size of every patched embedding and LM head."""
    return len(_SPECIALS) + len(_WORDS)


# π0-FAST's action tokenizer (lerobot/fast-action-tokenizer) is Hub code loaded with trust_remote_code;
# its tiny stand-in answers to this name.
TINY_FAST = "tiny-fast-action-tokenizer"


class TinyFastTokenizer:
    """FAST without merges: the action chunk's DCT (lerobot's `scale`, `min_token`), one token per coefficient.

    What lerobot uses of FAST's processor: calling it on a chunk, `bpe_tokenizer.decode`, `min_token`, `scale`.
    """

    scale = 10.0
    min_token = -100
    vocab_size = 200

    def __init__(self) -> None:
        self.bpe_tokenizer = self

    def __call__(self, chunk: Any) -> list[list[int]]:
        """Token ids of each chunk in a (batch, horizon, action_dim) array."""
        import numpy as np
        from scipy.fft import dct

        coeff = np.around(dct(np.asarray(chunk, dtype=np.float64), axis=1, norm="ortho") * self.scale)
        tokens = np.clip(coeff - self.min_token, 0, self.vocab_size - 1).astype(int)
        return [row.flatten().tolist() for row in tokens]

    def decode(self, ids: Any) -> str:
        """The characters FAST's BPE decodes to: one per DCT coefficient."""
        return "".join(chr(int(i)) for i in ids)


def _shrunk_paligemma(cls: type) -> Callable[..., Any]:
    def build(config: Any) -> Any:
        n = vocab_size()
        config._vocab_size = config.text_config.vocab_size = config.image_token_index = n
        for k, v in TINY_VISION.items():
            setattr(config.vision_config, k, v)
        # The projector maps image features into the language model's width (lerobot sets 2048, gemma_2b's).
        config.vision_config.projection_dim = config.text_config.hidden_size
        image, patch = config.vision_config.image_size, config.vision_config.patch_size
        config.text_config.num_image_tokens = (image // patch) ** 2
        return cls(config=config)

    return build


def _shrunk_gemma(cls: type) -> Callable[..., Any]:
    def build(config: Any, **kwargs: Any) -> Any:
        config.vocab_size = vocab_size()
        return cls(config, **kwargs)

    return build


def install(tokenizer: Path, setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make lerobot's π models tiny and find PaliGemma's tokenizer in the folder `tokenizer`.

    `setattr_` is `monkeypatch.setattr` in-process (undone after the test), plain `setattr` in a subprocess.
    """
    import importlib

    import transformers
    from lerobot.processor import tokenizer_processor

    for name in ("pi0.modeling_pi0", "pi05.modeling_pi05", "pi0_fast.modeling_pi0_fast"):
        mod = importlib.import_module(f"lerobot.policies.{name}")
        setattr_(mod, "get_gemma_config", lambda _variant, m=mod: m.GemmaConfig(**TINY_GEMMA))
        cls = mod.PaliGemmaForConditionalGenerationWithPiGemma
        setattr_(mod, "PaliGemmaForConditionalGenerationWithPiGemma", _shrunk_paligemma(cls))
        if hasattr(mod, "PiGemmaForCausalLM"):
            setattr_(mod, "PiGemmaForCausalLM", _shrunk_gemma(mod.PiGemmaForCausalLM))

    class LocalTokenizer(transformers.AutoTokenizer):
        """AutoTokenizer that reads PaliGemma's Hub id from the local folder (lerobot names no field for it)."""

        @classmethod
        def from_pretrained(cls, name: str, *args: Any, **kwargs: Any) -> Any:
            name = str(tokenizer) if name == PALIGEMMA_ID else name
            return transformers.AutoTokenizer.from_pretrained(name, *args, **kwargs)

    setattr_(tokenizer_processor, "AutoTokenizer", LocalTokenizer)

    class LocalProcessor(transformers.AutoProcessor):
        """AutoProcessor that gives π0-FAST's tiny action tokenizer for its name."""

        @classmethod
        def from_pretrained(cls, name: str, *args: Any, **kwargs: Any) -> Any:
            if name == TINY_FAST:
                return TinyFastTokenizer()
            return transformers.AutoProcessor.from_pretrained(name, *args, **kwargs)

    for mod in (tokenizer_processor, importlib.import_module("lerobot.policies.pi0_fast.modeling_pi0_fast")):
        setattr_(mod, "AutoProcessor", LocalProcessor)


def tiny_pi(policy: str, tokenizer: Path) -> dict:
    """Policy options of a tiny `policy` (pi0, pi05, pi0_fast): 32x32 images, chunks of 4, dims padded to 8.

    π0-FAST names its tokenizers in its config: the local one and the tiny FAST.
    """
    opts = {
        "image_resolution": [32, 32],
        "chunk_size": 4,
        "n_action_steps": 4,
        "max_state_dim": 8,
        "max_action_dim": 8,
        "tokenizer_max_length": 24,
        "scheduler_warmup_steps": 1,
        "scheduler_decay_steps": 4,
    }
    if policy != "pi0_fast":
        return {**opts, "num_inference_steps": 2}
    # Action tokens count down from the top of the vocabulary (fast_skip_tokens from its end): ids stay inside.
    fast = {"text_tokenizer_name": str(tokenizer), "action_tokenizer_name": TINY_FAST, "fast_skip_tokens": 0}
    # An untrained model's decoded tokens need not start with "Action: " (lerobot checks by default).
    fast |= {"max_action_tokens": 40, "max_decoding_steps": 40, "validate_action_token_prefix": False}
    return {**opts, **fast}
