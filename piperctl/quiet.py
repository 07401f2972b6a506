"""Silence third-party noise that says nothing actionable to a piperctl user."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_done = False


def quiet_third_party() -> None:
    """Mute lerobot's torchcodec fallback warning and similar start-up chatter (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    # lerobot logs a multi-line torchcodec load error when FFmpeg's shared libs are missing and then
    # falls back to PyAV, which decodes our videos fine: the message only alarms users.
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    for name in ("torchcodec", "datasets", "huggingface_hub", "accelerate", "diffusers", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torchcodec")
    warnings.filterwarnings("ignore", message=".*torchcodec.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
    warnings.filterwarnings("ignore", message=".*video decoding and encoding capabilities of torchvision.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The SVT-AV1 encoder and FFmpeg's muxer print banners straight to stderr from C.
    os.environ.setdefault("SVT_LOG", "1")
    try:
        import av.logging

        av.logging.set_level(av.logging.ERROR)
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    try:
        # The environment variable is read when huggingface_hub is imported, which may already have happened.
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001 - progress bars are cosmetic; never fail on them
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - progress bars are cosmetic; never fail on them
        pass


def video_backend() -> str:
    """Return the video decoder lerobot should use here: torchcodec when it loads, else PyAV."""
    quiet_third_party()
    try:
        import torchcodec.decoders  # noqa: F401  (loads the FFmpeg shared libs)

        return "torchcodec"
    except Exception:  # noqa: BLE001 - any load failure means: use PyAV
        return "pyav"


@contextmanager
def silence_native_stderr() -> Iterator[None]:
    """Swallow what C libraries (FFmpeg, SVT-AV1) write to fd 2 in a block; replay it if the block fails.

    lerobot resets PyAV's log callback after each encode, so FFmpeg's muxer banners reach the
    terminal no matter what log level we set; only redirecting the file descriptor stops them.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest capture, notebooks)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        except BaseException:
            os.dup2(saved, fd)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)
