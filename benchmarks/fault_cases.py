"""fault_server.py's cases that need more than one request: hostile PNG uploads (bombs, huge ancillary chunks),
huge integers, non-ASCII digits, raw sockets that disconnect mid-body, drip-feed a body or a request head, and a
SIGTERM while a heavy batch is being decoded. Loopback only; every loop is bounded."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
import zlib

import httpx

LONG_INT = "1" + "0" * 4400  # above Python's 4300-digit int-from-string limit


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def deflate_zeros(n: int, prefix: bytes = b"") -> bytes:
    """zlib of ``prefix`` + ``n`` zero bytes, built a MB at a time (a bomb without holding it)."""
    z = zlib.compressobj(9)
    out = [z.compress(prefix)]
    block = bytes(2 ** 20)
    for _ in range(n // len(block)):
        out.append(z.compress(block))
    return b"".join(out) + z.flush()


def grey_png(w: int, h: int, before_idat: bytes = b"", extra_idat: int = 0, after_idat: bytes = b"") -> bytes:
    rows = (b"\0" + bytes(w)) * min(h, 64)  # a bomb's first rows only: its header is what is refused
    idat = deflate_zeros(extra_idat, rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + before_idat
            + chunk(b"IDAT", idat) + after_idat + chunk(b"IEND", b""))


def hostile_uploads(size: int) -> list[tuple[str, str, dict]]:
    """The uploads that once raised the server's memory: (name, path, httpx kwargs)."""
    def jsn(body):
        return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}
    good = grey_png(size, size)
    bomb = grey_png(30000, 30000)  # a few KB declaring 900 megapixels
    itxt = grey_png(size, size, before_idat=chunk(b"iTXt", b"k\0\0\0\0\0" + b"a" * (6 * 2 ** 20)))
    ztxt = grey_png(size, size, before_idat=chunk(b"zTXt", b"k\0\0" + deflate_zeros(256 * 2 ** 20)))
    iccp = grey_png(size, size, before_idat=chunk(b"iCCP", b"icc\0\0" + deflate_zeros(256 * 2 ** 20)))
    idat = grey_png(size, size, extra_idat=200 * 2 ** 20)
    box = {"box": "0,0,4,4"}
    out = [("bomb as JSON", "/v1/edit", jsn({"image": base64.b64encode(bomb).decode(), "box": [0, 0, 4, 4]})),
           ("bomb as multipart", "/v1/edit", {"data": box, "files": {"image": ("b.png", bomb, "image/png")}}),
           ("bomb as mask", "/v1/edit", {"files": {"image": ("i.png", good, "image/png"),
                                                   "mask": ("m.png", bomb, "image/png")}})]
    for name, data in (("6 MB iTXt", itxt), ("zTXt bomb", ztxt), ("iCCP bomb", iccp), ("200 MB extra IDAT", idat)):
        out.append((name, "/v1/edit", {"data": box, "files": {"image": ("x.png", data, "image/png")}}))
    return out


def number_cases(image: bytes) -> list[tuple[str, str, dict]]:
    """Integers too long to read, and boxes of non-ASCII digits: each must be a 4xx."""
    raw = [f'{{"label": 1, "seed": {LONG_INT}}}', f'{{"labels": [{LONG_INT}]}}', f'{{"steps": -{LONG_INT}}}']
    out = [("huge integer", "/v1/generate", {"content": b.encode(), "headers": {"content-type": "application/json"}})
           for b in raw]
    files = {"image": ("x.png", image, "image/png")}
    out.append(("huge integer", "/v1/edit", {"data": {"box": "0,0,4,4", "seed": LONG_INT}, "files": files}))
    for box in ("\u00b3,0,4,4", "\u0663,0,4,4", "\uff10,0,4,4", "0,0,4,4\u00b2"):
        out.append(("non-ASCII digits", "/v1/edit", {"data": {"box": box}, "files": files}))
    return out


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


HEAD = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def disconnect_mid_body(port: int, n: int = 50) -> int:
    """``n`` clients send half a body and close; returns how many did."""
    for _ in range(n):
        with _connect(port) as s:
            s.sendall(HEAD % 1000 + b'{"label": 1, "seed": ' + b" " * 400)
    return n


def _status_of(s: socket.socket) -> int | None:
    try:
        data = s.recv(4096)
    except OSError:
        return None
    return int(data.split()[1]) if data.startswith(b"HTTP/") else None


def drip(port: int, what: str, every_s: float, limit_s: float) -> tuple[str, float]:
    """Drip a body (``what="body"``) or a request head one byte every ``every_s`` seconds; returns how the server
    ended it (its status, or "closed") and after how many seconds (giving up at ``limit_s``)."""
    s = _connect(port)
    s.settimeout(every_s)
    t0 = time.monotonic()
    head = HEAD % 10_000
    pending = (b"" if what == "body" else head) + b" " * 10_000
    if what == "body":
        s.sendall(head)
    try:
        while time.monotonic() - t0 < limit_s:
            try:
                s.sendall(pending[:1])
                pending = pending[1:]
            except OSError:
                return "closed", time.monotonic() - t0
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return "closed", time.monotonic() - t0
            if not data:
                return "closed", time.monotonic() - t0
            return str(int(data.split()[1])) if data.startswith(b"HTTP/") else "garbage", time.monotonic() - t0
        return "still open", time.monotonic() - t0
    finally:
        s.close()


def shutdown_under_load(proc, url: str, port: int, heavy: dict, clients: int = 6, signal_after_s: float = 1.5,
                        deadline_s: float = 3.0) -> dict:
    """``clients`` concurrent heavy generate requests and two stalled uploads, SIGTERM after ``signal_after_s``:
    every request's status and seconds after the signal, and the seconds until the process exited."""
    answers: dict[int, tuple[str, float]] = {}
    sent_at = {}
    stalled = [_connect(port) for _ in range(2)]
    for s in stalled:
        s.sendall(HEAD % 100 + b'{"label":')
    signalled = threading.Event()
    t_sig = [0.0]

    def ask(i):
        sent_at[i] = time.monotonic()
        try:
            r = httpx.post(url + "/v1/generate", json=dict(heavy, seed=i), timeout=120)
            status = str(r.status_code)
        except httpx.HTTPError as e:
            status = type(e).__name__
        answers[i] = status, time.monotonic() - t_sig[0] if signalled.is_set() else -1.0

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(signal_after_s)
    t_sig[0] = time.monotonic()
    signalled.set()
    proc.terminate()
    try:
        proc.wait(60)
    except Exception:
        proc.kill()
    exit_s = time.monotonic() - t_sig[0]
    for t in threads:
        t.join(60)
    stalled_status = [_status_of(s) for s in stalled]
    for s in stalled:
        s.close()
    return {"answers": [answers.get(i, ("lost", -1.0)) for i in range(clients)], "stalled": stalled_status,
            "exit_s": exit_s, "rc": proc.returncode, "deadline_s": deadline_s}
