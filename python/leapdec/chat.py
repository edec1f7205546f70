"""Chat: a model's chat template (from a GGUF file's ``tokenizer.chat_template`` or a checkpoint's
``tokenizer_config.json`` / ``chat_template.jinja``) rendered with ``jinja2``, the model's
end-of-turn stop tokens, and the ``leapdec chat`` REPL.

The template is rendered the way ``transformers``' ``apply_chat_template`` renders it (a sandboxed
jinja2 environment with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a
non-escaping ``tojson``, ``raise_exception`` and ``strftime_now``; the special tokens
``bos_token``/``eos_token``/``unk_token``/``pad_token`` as variables), so the text is the same.

    >>> from leapdec.chat import apply_chat_template
    >>> apply_chat_template("smollm2-135m-instruct", [{"role": "user", "content": "Hi"}])
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, ...<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# end-of-turn tokens of common chat formats (ChatML, Llama 3, Phi-3, Gemma): a stop token when
# the template writes it
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass
class ChatTemplate:
    """A chat template and the special-token strings it may refer to."""

    template: str
    special_tokens: dict = field(default_factory=dict)
    source: str = ""

    def render(self, messages, add_generation_prompt: bool = True, **kwargs) -> str:
        return _compile(self.template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                              **{**{k: v for k, v in self.special_tokens.items() if v is not None},
                                                 **kwargs})


def _compile(template: str):
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need jinja2: pip install jinja2") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _token_text(value):
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _from_checkpoint(path: Path) -> ChatTemplate:
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template = None
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text()
    else:
        template = config.get("chat_template")
        if isinstance(template, list):       # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
    if not isinstance(template, str) or not template:
        raise ValueError(f"{path} has no chat template (looked for chat_template.jinja and "
                         f"'chat_template' in tokenizer_config.json)")
    special = {k: _token_text(config.get(k)) for k in _SPECIAL}
    return ChatTemplate(template, special, str(path))


def _from_gguf(path: Path) -> ChatTemplate:
    from leapdec.models.gguf import gguf_chat_template, gguf_special_tokens

    template = gguf_chat_template(path)
    if not template:
        raise ValueError(f"{path} has no chat template (no tokenizer.chat_template in its metadata)")
    return ChatTemplate(template, gguf_special_tokens(path), str(path))


def chat_template(source) -> ChatTemplate:
    """The chat template of ``source``: a model from ``leapdec.load_model``, a zoo name, a GGUF
    file, a checkpoint directory, or a ``ChatTemplate``."""
    from leapdec import zoo
    from leapdec.models.gguf import is_gguf_file

    if isinstance(source, ChatTemplate):
        return source
    if hasattr(source, "config") and hasattr(source, "forward_paged"):          # a loaded model
        gguf_path = getattr(source, "gguf_path", None)
        if gguf_path is not None:
            return _from_gguf(Path(gguf_path))
        if getattr(source, "checkpoint_dir", None) is not None:
            return _from_checkpoint(Path(source.checkpoint_dir))
        raise ValueError("the model was not loaded from a GGUF file or a checkpoint directory, so it has "
                         "no chat template: pass the model's name or path")
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a model, a zoo name or a path, got {type(source).__name__}")
    if isinstance(source, str) and source in zoo.GGUF_MODELS:
        return _from_gguf(zoo.gguf_file(source))
    path = Path(source).expanduser()
    if path.is_file() and is_gguf_file(path):
        return _from_gguf(path)
    return _from_checkpoint(zoo.resolve(source))


def apply_chat_template(source, messages, add_generation_prompt: bool = True, tokenize: bool = False,
                        tokenizer=None, **kwargs):
    """Render ``messages`` (a list of ``{"role": ..., "content": ...}``) with ``source``'s chat
    template (see ``chat_template``). Returns the text, or with ``tokenize=True`` its token ids
    (encoded without adding special tokens, like ``transformers``; ``tokenizer`` defaults to the
    source's). Extra keyword arguments become template variables."""
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    text = chat_template(source).render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
    if not tokenize:
        return text
    if tokenizer is None:
        tokenizer = _tokenizer_of(source)
    return tokenizer.encode(text, add_special_tokens=False).ids


def _tokenizer_of(source):
    import leapdec

    if hasattr(source, "config") and hasattr(source, "forward_paged"):
        src = getattr(source, "gguf_path", None) or getattr(source, "checkpoint_dir", None)
        if src is None:
            raise ValueError("pass tokenizer=: the model does not say where its tokenizer is")
        return leapdec.load_tokenizer(src)
    return leapdec.load_tokenizer(source)


def stop_tokens(source, tokenizer, model=None) -> list[int]:
    """The ids that end an assistant turn: the model's eos token(s) and the end-of-turn tokens
    (``<|im_end|>``, ``<|eot_id|>``, ...) that the chat template writes."""
    template = chat_template(source).template
    ids = list(model.config.stop_token_ids) if model is not None else []
    for tok in END_OF_TURN:
        i = tokenizer.token_to_id(tok)
        if i is not None and tok in template and i not in ids:
            ids.append(i)
    return ids


def _stream_reply(model, tok, ids, stops, method, max_new_tokens, temperature, out=sys.stdout, **options) -> list[int]:
    """Stream one reply to ``out`` (text decoded incrementally) and return its tokens."""
    import leapdec

    new: list[int] = []
    shown = ""
    gen = leapdec.stream_generate(model, [ids], method=method, max_new_tokens=max_new_tokens,
                                  temperature=temperature, stop_tokens=stops, **options)
    for step in gen:
        new.extend(step[0])
        text = tok.decode(new)
        if text.endswith("\ufffd"):          # an unfinished UTF-8 sequence: wait for its next bytes
            continue
        out.write(text[len(shown):])
        out.flush()
        shown = text
    text = tok.decode(new)
    if len(text) > len(shown):
        out.write(text[len(shown):])
    out.write("\n")
    out.flush()
    return [t for t in new if t not in stops]


def repl(name_or_path, device="cpu", method="ar", max_new_tokens=256, temperature=0.0, system=None,
         stdin=None, out=None, weight_dtype=None, **options) -> int:
    """``leapdec chat``: read a user message per line, stream the model's reply; the conversation is
    kept. ``/reset`` starts a new one, ``/exit`` (or end of input) quits."""
    import leapdec

    stdin = stdin or sys.stdin
    out = out or sys.stdout
    model = leapdec.load_model(name_or_path, device=device, weight_dtype=weight_dtype)
    tok = leapdec.load_tokenizer(name_or_path)
    template = chat_template(model if getattr(model, "gguf_path", None) else name_or_path)
    stops = stop_tokens(template, tok, model)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False
    if interactive:
        out.write(f"leapdec chat with {name_or_path} ({method}); /reset clears the conversation, /exit quits\n")
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(base)
            continue
        messages.append({"role": "user", "content": line})
        ids = tok.encode(template.render(messages, add_generation_prompt=True), add_special_tokens=False).ids
        reply = _stream_reply(model, tok, ids, stops, method, max_new_tokens, temperature, out=out, **options)
        messages.append({"role": "assistant", "content": tok.decode(reply)})
    return 0


__all__ = ["ChatTemplate", "END_OF_TURN", "apply_chat_template", "chat_template", "repl", "stop_tokens"]
