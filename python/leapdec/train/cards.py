"""Model cards: ``card.json`` (machine-readable) and ``CARD.md`` (the same facts for people),
written beside every checkpoint a recipe trains.

A card records how to reproduce the checkpoint (the exact command, the recipe's settings, the
corpus), what training did (steps, tokens seen, wall time, held-out loss), where it ran (CPU or
GPU model, torch version, date) and the SHA-256 of every file it describes, so a test can check
the card against the files that ship.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

CARD_JSON = "card.json"
CARD_MD = "CARD.md"
CARD_VERSION = 1

# Top-level fields every card has (``verify_card`` reports the missing ones).
REQUIRED_FIELDS = ("name", "card_version", "recipe", "command", "date", "machine", "corpus",
                   "training", "eval", "model", "files")
REQUIRED_TRAINING = ("steps", "tokens_seen", "wall_s", "train_s")
REQUIRED_MACHINE = ("device", "cpu", "torch", "python")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(directory: str | os.PathLike, names) -> dict:
    """``{name: {"sha256", "bytes"}}`` for the named files of ``directory``."""
    directory = Path(directory)
    out = {}
    for name in names:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"names: {path} does not exist")
        out[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict:
    """Where a run happens: device, CPU model and cores, GPU name, torch threads and versions."""
    device = torch.device(device)
    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value) + "`"
    return str(value)


def render_markdown(card: dict) -> str:
    """``CARD.md``: the card's facts as a short readable page."""
    tr, ev, corpus, model, mach = (card["training"], card["eval"], card["corpus"],
                                   card["model"], card["machine"])
    lines = [
        f"# {card['name']}",
        "",
        card.get("summary", ""),
        "",
        "## Reproduce",
        "",
        "```",
        *[c for c in card.get("recipe", {}).get("init_from_commands", []) if c],
        card["command"],
        "```",
        "",
        f"Trained {card['date']} on {mach['device']} "
        f"({mach['gpu'] or mach['cpu']}, {mach.get('cpu_count')} cores, "
        f"{mach.get('torch_threads')} torch threads), torch {mach['torch']}, "
        f"Python {mach['python']}.",
        "",
        "## Model",
        "",
        "| field | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in model.items() if k != "config"]
    lines += ["", "## Training", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in tr.items() if k != "history"]
    lines += [f"| recipe.{k} | {_fmt(v)} |" for k, v in card["recipe"].items()]
    if tr.get("history"):
        lines += ["", "Held-out loss during training (quick subset):", "",
                  "| step | tokens | seconds | train loss | held-out loss |", "|---|---|---|---|---|"]
        lines += [f"| {h['step']} | {h['tokens']} | {h['seconds']:.0f} | {_fmt(h['train_loss'])} | "
                  f"{h['heldout_loss']:.4f} |" for h in tr["history"]]
    lines += ["", "## Corpus", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in corpus.items()]
    lines += ["", "## Evaluation", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in ev.items() if k not in ("quick", "sample")]
    quick = ev.get("quick")
    if quick:
        files = ", ".join(f["path"] for f in quick["files"])
        lines += [f"| quick.loss | {quick['loss']:.4f} ({quick['windows']} windows of "
                  f"{quick['seq_len']} tokens from {files}) |"]
    sample = ev.get("sample")
    if sample:
        lines += ["", f"Sample ({sample['method']}, held-out prompt `{sample['source']}`):", "",
                  "```python", sample["prompt"] + sample["completion"], "```"]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {name} | {e['bytes']} | `{e['sha256']}` |" for name, e in card["files"].items()]
    return "\n".join(lines) + "\n"


def write_card(directory: str | os.PathLike, card: dict) -> Path:
    """Write ``card.json`` and ``CARD.md`` into ``directory``; returns the ``card.json`` path."""
    missing = [k for k in REQUIRED_FIELDS if k not in card]
    if missing:
        raise ValueError(f"card: missing fields {missing}")
    directory = Path(directory)
    path = directory / CARD_JSON
    path.write_text(json.dumps(card, indent=2) + "\n")
    (directory / CARD_MD).write_text(render_markdown(card))
    return path


def load_card(directory: str | os.PathLike) -> dict:
    """The ``card.json`` of a checkpoint directory."""
    path = Path(directory) / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"directory: no {CARD_JSON} in {directory}")
    return json.loads(path.read_text())


def verify_card(directory: str | os.PathLike) -> list[str]:
    """Problems with a directory's card: missing fields, and listed files that are absent or
    whose size or SHA-256 differ. An empty list means the card matches the files."""
    directory = Path(directory)
    try:
        card = load_card(directory)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        return [str(e)]
    problems = [f"missing field {k!r}" for k in REQUIRED_FIELDS if k not in card]
    problems += [f"missing field 'training.{k}'" for k in REQUIRED_TRAINING
                 if k not in card.get("training", {})]
    problems += [f"missing field 'machine.{k}'" for k in REQUIRED_MACHINE
                 if k not in card.get("machine", {})]
    for name, entry in card.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: listed in the card but absent")
            continue
        if path.stat().st_size != entry.get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, card says {entry.get('bytes')}")
        if file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from the card")
    return problems


def share_tokenizer(directory: str | os.PathLike, source: str) -> dict:
    """Store a checkpoint's tokenizer once: when its tokenizer files are byte-identical to the zoo
    model ``source``'s, delete them, drop them from the card's file list and name ``source`` in
    the card's ``tokenizer_from`` (``zoo.tokenizer_dir`` follows it). Returns the new card."""
    from leapdec.zoo import TOKENIZER_FILES, tokenizer_dir

    directory = Path(directory)
    home = tokenizer_dir(source)
    for name in TOKENIZER_FILES:
        mine, theirs = directory / name, home / name
        if not mine.is_file() or not theirs.is_file() or file_sha256(mine) != file_sha256(theirs):
            raise ValueError(f"source: {name} of {directory} is not identical to {source}'s ({home})")
    card = load_card(directory)
    for name in TOKENIZER_FILES:
        (directory / name).unlink()
        card.get("files", {}).pop(name, None)
    card = {"name": card["name"], "tokenizer_from": source,
            **{k: v for k, v in card.items() if k not in ("name", "tokenizer_from")}}
    write_card(directory, card)
    return card


def main(argv: list[str] | None = None) -> int:
    """``python -m leapdec.train.cards share-tokenizer DIR SOURCE``: see :func:`share_tokenizer`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m leapdec.train.cards", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    share = sub.add_parser("share-tokenizer", help=share_tokenizer.__doc__.split("\n")[0])
    share.add_argument("directory")
    share.add_argument("source", help="zoo model whose identical tokenizer files to point at")
    args = parser.parse_args(argv)
    share_tokenizer(args.directory, args.source)
    print(f"{args.directory}: tokenizer_from {args.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
