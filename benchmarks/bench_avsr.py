"""Character error rate of the AV speech recognisers on held-out sentences (each with a word never
seen in training): audio / video / AV streams x clean / 10 / 0 / -5 dB speech-shaped noise x
decoding method, for the pretrained zoo model and its no-pretraining ablation.

    python benchmarks/bench_avsr.py [--models espeak-avsr espeak-avsr-nopretrain] [--utterances 100]
        [--first 0] [--methods ctc_greedy ctc_prefix attention ctc_attention] [--beam 10] [--ctc-weight 0.3]
        [--penalty 0] [--noise-seed 0 [1000 2000]] [--json rows.json] [--markdown table.md]

Utterance i is held-out sentence i (counted from ``--first``: sentences 100-199 serve as the
development set for choosing ``--ctc-weight``, the default first 100 as the test set) synthesised
with the seed the recipe used for its held-out set (``leapdec.train.avsr.heldout_seed``); noise at
each SNR is drawn with seed i (``--noise-seed k``: seed k + i, another draw of the same SNRs), so
every model, method and stream sees the same signals. Video does
not depend on the SNR, so video-only rows are decoded once and shown under "clean". Several
``--noise-seed`` values score every noisy condition once per draw (the sentences are synthesised
once); the tables then show the mean CER over the draws, and a last table the AV model's relative
gain over audio alone at each noisy SNR (1 - mean AV CER / mean audio CER, and per draw): one draw
of 100 sentences moves that gain by several points.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import leapdec.speech as speech
from leapdec.speech import data
from leapdec.speech.metrics import char_error_rate
from leapdec.train.avsr import heldout_seed

SNRS = ("clean", "10", "0", "-5")
MODALITIES = ("av", "audio", "video")


def heldout_utterances(n: int, first: int = 0) -> list:
    held = data.sentence_splits()["heldout"]
    if first < 0 or first + n > len(held):
        raise ValueError(f"--first {first} + --utterances {n} exceeds the {len(held)} held-out sentences")
    return [data.synthesize(held[i], seed=heldout_seed(i))
            for i in tqdm(range(first, first + n), desc="held-out utterances")]


def with_noise(utts, snr: str, noise_seed: int = 0) -> list:
    """``utts`` with noise at ``snr`` dB, utterance i's drawn with seed ``noise_seed + i``."""
    if snr == "clean":
        return utts
    return [data.Utterance(data.add_noise(u.audio, float(snr), seed=noise_seed + i), u.video, u.text, u.voice,
                           u.speed, float(snr), u.phonemes) for i, u in enumerate(utts)]


def score(model, utts, method, modality, batch, beam, ctc_weight, penalty=0.0) -> dict:
    hyps, wall, steps = [], 0.0, 0
    for c in range(0, len(utts), batch):
        out = speech.transcribe(model, utts[c:c + batch], method=method, modality=modality, beam=beam,
                                ctc_weight=ctc_weight, penalty=penalty)
        hyps += out.texts
        wall += out.stats["wall_s"]
    return {"cer": char_error_rate([u.text for u in utts], hyps), "wall_s": wall,
            "examples": [[u.text, h] for u, h in zip(utts[:3], hyps[:3])]}


def mean_cer(rows, **key) -> float | None:
    """Mean CER over the draws of the rows matching ``key`` (None when there are none)."""
    cers = [r["cer"] for r in rows if all(r[k] == v for k, v in key.items())]
    return sum(cers) / len(cers) if cers else None


def gains(rows) -> list[dict]:
    """The AV stream's relative CER reduction over audio alone, per model x method x noisy SNR
    where both were scored: ``gain`` from the CERs averaged over the draws, ``per_draw`` each."""
    out = []
    for name, method, snr in dict.fromkeys((r["model"], r["method"], r["snr"]) for r in rows if r["snr"] != "clean"):
        key = dict(model=name, method=method, snr=snr)
        av, audio = mean_cer(rows, modality="av", **key), mean_cer(rows, modality="audio", **key)
        if av is None or not audio:
            continue
        per_draw = []
        for d in sorted({r["noise_seed"] for r in rows if r["snr"] == snr and r["model"] == name}):
            av_d, audio_d = (mean_cer(rows, modality=m, noise_seed=d, **key) for m in ("av", "audio"))
            if av_d is not None and audio_d:
                per_draw.append(1 - av_d / audio_d)
        out.append({**key, "av": av, "audio": audio, "gain": 1 - av / audio, "per_draw": per_draw})
    return out


def markdown(rows, models, methods) -> str:
    lines = []
    draws = sorted({r.get("noise_seed", 0) for r in rows if r["snr"] != "clean"})
    if len(draws) > 1:
        lines += [f"Noisy cells: mean CER over {len(draws)} noise draws (seeds {', '.join(map(str, draws))}).", ""]
    for name in models:
        lines += [f"**{name}** (CER %, lower is better)", "",
                  "| method | streams | " + " | ".join(s if s == "clean" else f"{s} dB" for s in SNRS) + " |",
                  "|---|---|" + "---|" * len(SNRS)]
        for method in methods:
            for modality in MODALITIES:
                cells = []
                for snr in SNRS:
                    cer = mean_cer(rows, model=name, method=method, modality=modality, snr=snr)
                    cells.append("" if cer is None else f"{100 * cer:.1f}")
                lines.append(f"| {method} | {modality} | " + " | ".join(cells) + " |")
        lines.append("")
    table = gains(rows)
    if table:
        lines += ["**AV against audio alone** (relative CER reduction; per draw in brackets)", "",
                  "| model | method | SNR | AV CER | audio CER | gain |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['model']} | {g['method']} | {g['snr']} dB | {100 * g['av']:.2f} | {100 * g['audio']:.2f} | "
                  f"{100 * g['gain']:.1f} % ({' / '.join(f'{100 * x:.1f}' for x in g['per_draw'])}) |" for g in table]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["espeak-avsr", "espeak-avsr-nopretrain"])
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--first", type=int, default=0,
                        help="first held-out sentence (e.g. 100: a development set disjoint from the default "
                             "test set, for tuning ctc_weight)")
    parser.add_argument("--methods", nargs="+", default=["ctc_greedy", "ctc_prefix", "attention", "ctc_attention"],
                        choices=list(speech.METHODS))
    parser.add_argument("--snrs", nargs="+", default=list(SNRS), choices=list(SNRS))
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=list(MODALITIES))
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--ctc-weight", type=float, default=0.3)
    parser.add_argument("--penalty", type=float, default=0.0, help="length bonus per character (beam methods)")
    parser.add_argument("--noise-seed", type=int, nargs="+", default=[0],
                        help="utterance i's noise is drawn with seed noise_seed + i (another draw of the same SNRs); "
                             "several: every noisy condition once per draw, tables show the means")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the tables here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not data.espeak_available():
        parser.error(f"espeak-ng is not installed: {data.INSTALL_HINT}")
    start = time.perf_counter()
    utts = heldout_utterances(args.utterances, args.first)
    seeds = list(dict.fromkeys(args.noise_seed))
    noisy = {(snr, seed): with_noise(utts, snr, seed) for snr in args.snrs for seed in seeds}
    rows = []
    jobs = [(name, method, modality, snr, seed) for name in args.models for method in args.methods
            for modality in args.modalities for snr in args.snrs
            for seed in (seeds if snr != "clean" else seeds[:1]) if modality != "video" or snr == "clean"]
    models = {name: speech.load(name) for name in args.models}
    for name, method, modality, snr, seed in tqdm(jobs, desc="conditions"):
        r = score(models[name], noisy[snr, seed], method, modality, args.batch, args.beam, args.ctc_weight,
                  args.penalty)
        rows.append({"model": name, "method": method, "modality": modality, "snr": snr, "noise_seed": seed, **r})
        tqdm.write(f"{name:24s} {method:14s} {modality:5s} {snr:>5s} draw {seed:<5d} CER {100 * r['cer']:5.1f} %  "
                   f"({r['wall_s']:.1f} s)")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "threads": args.threads, "commit": commit,
            "utterances": args.utterances, "first": args.first, "beam": args.beam,
            "ctc_weight": args.ctc_weight, "penalty": args.penalty, "noise_seeds": seeds,
            "wall_s": time.perf_counter() - start}
    table = markdown(rows, args.models, args.methods)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
