"""espeak-ng through its C library (``libespeak-ng.so.1``, ``ctypes``): 22.05 kHz int16 samples and
the phoneme events with their sample positions (synthesis callback, phoneme events on).

espeak-ng carries state from one synthesis to the next (its pitch flutter), so the same call can
differ by a few samples depending on what was spoken before. For exactly reproducible output,
``Synthesizer`` runs this file as a small server process (no torch in it) that initialises
espeak-ng once and forks a fresh child per request: every synthesis starts from the same state.
This module imports nothing from leapdec or torch, so the server starts in a fraction of a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import struct
import subprocess
import sys
import threading

ESPEAK_RATE = 22_050
INSTALL_HINT = "install it with: apt-get install -y espeak-ng  (Debian/Ubuntu; brew install espeak-ng on macOS)"
_EVENT_END, _EVENT_PHONEME = 0, 7


class EspeakNotFound(RuntimeError):
    """espeak-ng (its shared library) is not installed."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def load_library():
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError as e:
        raise EspeakNotFound(f"espeak-ng is not installed (no {name}): {INSTALL_HINT}") from e


class Espeak:
    """The library in synchronous mode with phoneme events; one call at a time, in this process."""

    def __init__(self):
        self.lib = load_library()
        # AUDIO_OUTPUT_SYNCHRONOUS = 2, espeakINITIALIZE_PHONEME_EVENTS = 1
        rate = self.lib.espeak_Initialize(2, 0, None, 1)
        if rate != ESPEAK_RATE:
            raise EspeakNotFound(f"espeak-ng failed to initialise (returned {rate}; its data files may be "
                                 f"missing): {INSTALL_HINT}")
        self._chunks: list[bytes] = []
        self._events: list[tuple[str, int]] = []
        self._cb = _CALLBACK(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events):
        if n > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while events[i].type != _EVENT_END:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((e.id.string.decode("ascii", "replace"), int(e.sample)))
            i += 1
        return 0

    def synth(self, text: str, voice: str, speed: int, pitch: int) -> tuple[bytes, list[tuple[str, int]]]:
        """int16 little-endian samples at 22.05 kHz (bytes) and ``(phoneme, start sample)`` events."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, int(speed), 0)     # espeakRATE
        self.lib.espeak_SetParameter(3, int(pitch), 0)     # espeakPITCH
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        # position 0, POS_CHARACTER = 1, end 0, espeakCHARS_UTF8 = 1
        status = self.lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)
        if status != 0:
            raise RuntimeError(f"espeak-ng failed to synthesise {text!r} (status {status})")
        return b"".join(self._chunks), list(self._events)


# ----------------------------------------------------------------------------- the server

def _send(stream, obj) -> None:
    payload = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _receive(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("espeak-ng server closed its pipe")
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def _forked_synth(engine: Espeak, request):
    """Run one request in a fresh fork of this (never-synthesising) process."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            result = engine.synth(*request)
        except BaseException as e:  # noqa: BLE001 - sent back and raised by the client
            result = e
        with os.fdopen(write_fd, "wb") as f:
            f.write(pickle.dumps(result))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        payload = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(payload) if payload else RuntimeError("espeak-ng's synthesis process died")


def serve() -> None:
    """The server loop: requests ``(text, voice, speed, pitch)`` on stdin, results on stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        engine = Espeak()
    except EspeakNotFound as e:
        _send(stdout, e)
        return
    _send(stdout, "ready")
    while True:
        try:
            request = _receive(stdin)
        except EOFError:
            return
        _send(stdout, _forked_synth(engine, request))


class Synthesizer:
    """Client of the server process (started on first use); ``synth`` is reproducible exactly.
    Without ``fork`` (Windows) it synthesises in this process instead."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._local = None

    def _start(self):
        if not hasattr(os, "fork"):
            self._local = Espeak()
            return
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        first = _receive(self._proc.stdout)
        if isinstance(first, BaseException):
            self._proc.wait()
            self._proc = None
            raise first

    def synth(self, text: str, voice: str, speed: int, pitch: int):
        with self._lock:
            if self._local is not None:
                return self._local.synth(text, voice, speed, pitch)
            if self._proc is None or self._proc.poll() is not None:
                self._start()
                if self._local is not None:
                    return self._local.synth(text, voice, speed, pitch)
            _send(self._proc.stdin, (text, voice, int(speed), int(pitch)))
            result = _receive(self._proc.stdout)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()
            self._proc = None


if __name__ == "__main__":
    serve()
