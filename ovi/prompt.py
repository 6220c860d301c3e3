"""Ovi's prompt format, built from separate fields.

Ovi reads one prompt (both towers get the same text): the scene, spoken lines each between ``<S>`` and ``<E>``,
and a description of the sound at the end, written ``<AUDCAP>...<ENDAUDCAP>`` for the 720x720 model and
``Audio: ...`` for the 960x960 models (Ovi 1.1). Negatives are separate per tower; Ovi's defaults are below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

SPEECH_START, SPEECH_END = "<S>", "<E>"
AUDIO_CAPTION_START, AUDIO_CAPTION_END = "<AUDCAP>", "<ENDAUDCAP>"
AUDIO_PREFIX = "Audio:"

# Prompt styles: how the sound description is marked.
STYLE_AUDCAP = "audcap"          # <AUDCAP>...<ENDAUDCAP> (Ovi 720x720 5s)
STYLE_AUDIO_PREFIX = "audio_prefix"   # Audio: ... (Ovi 960x960 5s / 10s)
STYLES = (STYLE_AUDCAP, STYLE_AUDIO_PREFIX)

# Ovi's default negatives (its inference config), one per tower.
OVI_VIDEO_NEGATIVE = "jitter, bad hands, blur, distortion"
OVI_AUDIO_NEGATIVE = "robotic, muffled, echo, distorted"

_TAGS = re.compile(r"</?(?:S|E|AUDCAP|ENDAUDCAP)>")


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"prompt style: expected one of {', '.join(STYLES)}, got {style!r}")


def speech_lines(speech: str | Sequence[str] | None) -> list[str]:
    """The spoken lines: a list as given, or one string split at line breaks; empty lines dropped, tags a user
    may have typed (``<S>``, ``<E>``) removed so they are not doubled."""
    if speech is None:
        return []
    if isinstance(speech, str):
        items = speech.splitlines()
    elif isinstance(speech, Sequence) and all(isinstance(s, str) for s in speech):
        items = list(speech)
    else:
        raise ValueError(f"speech: expected a string or a list of strings, got {type(speech).__name__}")
    lines = (" ".join(_TAGS.sub("", item).split()) for item in items)
    return [line for line in lines if line]


def sound_caption(sound: str, style: str) -> str:
    """The sound description marked for ``style``: ``<AUDCAP>sound<ENDAUDCAP>`` or ``Audio: sound``; '' for none."""
    _check_style(style)
    text = " ".join(_TAGS.sub("", sound or "").split())
    if text.startswith(AUDIO_PREFIX):
        text = text[len(AUDIO_PREFIX):].strip()
    if not text:
        return ""
    if style == STYLE_AUDCAP:
        return f"{AUDIO_CAPTION_START}{text}{AUDIO_CAPTION_END}"
    return f"{AUDIO_PREFIX} {text}"


def convert_style(prompt: str, style: str) -> str:
    """Rewrite the sound description of a complete Ovi prompt into ``style`` (what Ovi's loader does when a prompt
    uses the other model's marking)."""
    _check_style(style)
    if style == STYLE_AUDCAP:
        return re.sub(r"Audio:\s*(.*)", lambda m: f"{AUDIO_CAPTION_START}{m.group(1).strip()}{AUDIO_CAPTION_END}",
                      prompt, flags=re.S)
    return re.sub(r"<AUDCAP>(.*?)<ENDAUDCAP>", lambda m: f"{AUDIO_PREFIX} {m.group(1).strip()}", prompt, flags=re.S)


def build_ovi_prompt(scene: str, speech: str | Sequence[str] | None = None, sound: str = "",
                     style: str = STYLE_AUDCAP) -> str:
    """One Ovi prompt: the scene, each spoken line as ``<S>line<E>``, then the sound description, separated by
    single spaces.

    >>> build_ovi_prompt("A man waves.", ["Hello!"], "A cheerful voice.", "audcap")
    'A man waves. <S>Hello!<E> <AUDCAP>A cheerful voice.<ENDAUDCAP>'
    >>> build_ovi_prompt("A man waves.", "Hello!", "A cheerful voice.", "audio_prefix")
    'A man waves. <S>Hello!<E> Audio: A cheerful voice.'

    A scene that already carries tags (a prompt pasted from Ovi's examples) keeps them, with its sound
    description converted to ``style``.
    """
    _check_style(style)
    if not isinstance(scene, str):
        raise ValueError(f"scene: expected a string, got {type(scene).__name__}")
    parts = [convert_style(" ".join(scene.split()), style)]
    parts += [f"{SPEECH_START}{line}{SPEECH_END}" for line in speech_lines(speech)]
    parts.append(sound_caption(sound, style))
    return " ".join(part for part in parts if part)


# ---------------------------------------------------------------------------------------- which model reads what

@dataclass(frozen=True)
class PromptSet:
    """The four texts a joint model is conditioned on."""

    video_prompt: str
    audio_prompt: str
    video_negative: str
    audio_negative: str


def compose_prompts(video_prompt: str, audio_prompt: str = "", *, video_negative: str | None = None,
                    audio_negative: str | None = None, speech: str | Sequence[str] | None = None, sound: str = "",
                    prompt_style: str | None = None, prompt_field: str = "video_prompt",
                    speech_field: str = "speech") -> PromptSet:
    """The texts each tower reads, from what a user typed (the one copy of this policy: node and CLI call it).

    prompt_style: an Ovi style (``STYLES``) or None for a model without Ovi's prompt format (the embedded default).
    Ovi: the scene, the spoken lines and the sound description (``sound``, else ``audio_prompt``) form one prompt
    both towers read; a negative left out (None) is Ovi's default. Other models: the audio tower reads
    ``audio_prompt``, else ``sound``, else the video prompt; they do not speak; a negative left out is empty.
    prompt_field, speech_field: how the caller names the prompt and the spoken lines in errors.
    """
    if not isinstance(video_prompt, str) or not video_prompt.strip():
        raise ValueError(f"{prompt_field}: expected a description of the video, received an empty prompt")
    if prompt_style is not None:
        prompt = build_ovi_prompt(video_prompt, speech, (sound or "").strip() or (audio_prompt or "").strip(),
                                  prompt_style)
        return PromptSet(prompt, prompt, OVI_VIDEO_NEGATIVE if video_negative is None else video_negative.strip(),
                         OVI_AUDIO_NEGATIVE if audio_negative is None else audio_negative.strip())
    if speech_lines(speech):
        raise ValueError(f"{speech_field}: this model does not speak (spoken lines are an Ovi prompt feature); "
                         "leave it empty or load an Ovi model")
    audio = next((text for text in (audio_prompt, sound) if text and text.strip()), video_prompt)
    return PromptSet(video_prompt.strip(), audio.strip(), (video_negative or "").strip(),
                     (audio_negative or "").strip())
