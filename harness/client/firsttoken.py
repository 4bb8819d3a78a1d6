"""The first-token watcher: the arrival time of each byte run before the first token, seen by a thread.

Why it exists (measured on Linux 6.x, loopback; benchmarks/README.md "client ceiling"): a read's
kernel receive stamp (`SO_TIMESTAMPNS`) is that of the last segment it copied, and TCP merges a
segment into the unread one before it in the receive queue (`tcp_try_coalesce`), the merged one
taking the *later* stamp. So once a busy event loop reads a stream late enough for the first and
second content events to sit in the queue together, the first token's own arrival is gone:
smaller reads, `MSG_PEEK` or `SO_RCVLOWAT` all see one merged segment with the second one's stamp,
and TTFT comes out exactly one token gap late.

The only way to keep it is to look at the queue while the first content event is still alone in
it. One real OS thread per process (not a greenlet: it must run while gevent's loop is busy) waits
in its own epoll on the sockets of requests that have their headers but not yet their first token.
Before each such read the reader arms the socket (one-shot, edge-triggered: one `epoll_ctl`); at
the next arrival the thread peeks (`MSG_PEEK`, nothing consumed) and notes an observation: "the
first L unread bytes were all present by kernel time W"; if those bytes hold no token yet (an
empty role chunk), it arms the socket again for the next arrival. When the read finally returns,
the reader splits the bytes at the observed lengths and gives each part the stamp of the first
observation that held it. After the first token nothing is armed: token reads, the common path,
pay nothing but a few local checks.

The thread needs the GIL once per wake-up, which a busy loop gives up within
`sys.getswitchinterval()` (5 ms by default): the first token keeps its own stamp as long as that is
shorter than the gap to the second token. When it is not, the stamp is the read's, as without the
watcher: never earlier than the truth. The peeks themselves call libc's `recvmsg` through
`ctypes.PyDLL`, which keeps the GIL (a MSG_DONTWAIT peek never blocks): a Python socket call would
hand the GIL back to the loop at every peek and wait up to 5 ms to get it again, and one wake-up
often has several sockets to peek.

Validity of an observation for read k (whose stamp is S_k, the previous read's S_k-1): every byte
it saw was present before read k's syscall and after read k-1's, so S_k-1 < W <= S_k and
L <= len(data). Anything else (a peek that raced a read) is dropped; it can only cost precision.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import struct
import sys
from typing import Any

__all__ = ["Watch", "enabled", "watcher"]

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_ANC_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_PEEK_SIZE = 65536
# struct cmsghdr on 64-bit Linux (size_t len; int level; int type), then the timespec.
_CMSG = struct.Struct("=Qiiqq")
_CMSG_HEAD = 16
# gevent's monkey-patching removes select.epoll (not the constants, but do not rely on that).
_EPOLLIN = getattr(select, "EPOLLIN", 0x001)
_EPOLLET = getattr(select, "EPOLLET", 1 << 31)
_EPOLLONESHOT = getattr(select, "EPOLLONESHOT", 1 << 30)
# One wake-up per arming: the reader arms before each read until the first token, so the thread
# peeks once per read (the arrival that makes the socket readable), never at every token of a
# stream whose reader is behind; and nothing has to be undone at the first token.
_ARMED = _EPOLLIN | _EPOLLET | _EPOLLONESHOT
# Bytes that look like a token event (non-empty content or reasoning, or tool calls): once a peek
# has seen one, the thread stops; before that (headers, an empty role chunk) it arms itself again.
# Only a guide for when to stop looking: the stamps themselves never depend on it.
_TOKEN = re.compile(rb'"(?:content|reasoning_content|reasoning)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[')


def enabled() -> bool:
    """On unless `HARNESS_FIRST_TOKEN_WATCH=0`: benchmarks switch it off to show what it changes."""
    return os.environ.get("HARNESS_FIRST_TOKEN_WATCH", "1") != "0"


def _original(module: str, name: str) -> Any:
    """The standard library's own object, also in a process gevent has monkey-patched (Locust):
    the watcher must be a real thread with a real epoll, never a greenlet."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original(module, name)
        except (AttributeError, ImportError):
            return None
    return getattr(sys.modules.get(module) or __import__(module), name, None)


class Watch:
    """One connection's registration: a duplicate of its socket's descriptor (a number the thread
    can use until the watch is detached, whatever the connection does), and the observations
    (kernel ns W, bytes L) collected since the reader last took them."""

    __slots__ = ("armed", "fd", "obs", "registered")

    def __init__(self, sock: socket.socket) -> None:
        self.fd = os.dup(sock.fileno())
        self.obs: list[tuple[int, int]] = []
        self.armed = False
        self.registered = False


class _Peek:
    """`recvmsg(fd, MSG_PEEK | MSG_DONTWAIT)` through libc with the GIL held: (bytes queued, kernel
    receive stamp in ns) or None. One scratch buffer: only the length and the stamp are kept."""

    def __init__(self) -> None:
        import ctypes

        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class MsgHdr(ctypes.Structure):
            _fields_ = [
                ("name", ctypes.c_void_p),
                ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(IoVec)),
                ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p),
                ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int),
            ]

        libc = ctypes.PyDLL(None)
        self._recvmsg = libc.recvmsg
        self._recvmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MsgHdr), ctypes.c_int]
        self._recvmsg.restype = ctypes.c_ssize_t
        self._buf = ctypes.create_string_buffer(_PEEK_SIZE)
        self._ctl = ctypes.create_string_buffer(_ANC_SIZE)
        self._iov = IoVec(ctypes.cast(self._buf, ctypes.c_void_p), _PEEK_SIZE)
        self._msg = MsgHdr(
            None, 0, ctypes.pointer(self._iov), 1, ctypes.cast(self._ctl, ctypes.c_void_p), 0, 0
        )
        self._ref = ctypes.byref(self._msg)
        self._string_at = ctypes.string_at
        self._addr = ctypes.addressof(self._buf)

    def __call__(self, fd: int) -> tuple[int, int, bool] | None:
        """(bytes queued, kernel ns, whether they hold a token) or None."""
        msg = self._msg
        msg.controllen = _ANC_SIZE
        n = self._recvmsg(fd, self._ref, _PEEK)
        if n <= 0 or msg.controllen < _CMSG_HEAD + 16:
            return None
        _len, level, kind, sec, nsec = _CMSG.unpack_from(self._ctl.raw)
        if level != socket.SOL_SOCKET or kind != _SO_TIMESTAMPNS:
            return None
        token = _TOKEN.search(self._string_at(self._addr, n)) is not None
        return int(n), sec * 1_000_000_000 + nsec, token


class _Watcher:
    def __init__(self) -> None:
        epoll = _original("select", "epoll")
        start = _original("_thread", "start_new_thread")
        if epoll is None or start is None:
            raise OSError("no epoll")
        self.peek = _Peek()
        self.ep = epoll()
        self.watches: dict[int, Watch] = {}
        self.pid = os.getpid()
        start(self._run, ())

    def _run(self) -> None:
        poll = self.ep.poll
        watches = self.watches
        peek = self.peek
        while True:
            try:
                events = poll(1.0)
            except OSError:
                return
            again = []
            for fd, _ in events:
                w = watches.get(fd)
                if w is None or not w.armed:
                    continue
                seen = peek(fd)
                if seen is not None:
                    size, ns, token = seen
                    obs = w.obs
                    if not obs or size > obs[-1][1]:
                        obs.append((ns, size))
                    if not token:
                        again.append(w)
            # Re-arming releases the GIL (epoll_ctl): only once every socket of this wake-up is peeked.
            for w in again:
                with contextlib.suppress(OSError):  # detached meanwhile
                    if w.armed:
                        self.ep.modify(w.fd, _ARMED)

    # --- the reader's side (any thread or greenlet; epoll_ctl never blocks) ------------------
    def attach(self, sock: socket.socket) -> Watch:
        w = Watch(sock)
        self.watches[w.fd] = w
        return w

    def arm(self, w: Watch) -> None:
        """Before a read: one wake-up at the next arrival (at once if bytes are already queued)."""
        w.obs = []
        w.armed = True
        if w.registered:
            self.ep.modify(w.fd, _ARMED)
        else:
            self.ep.register(w.fd, _ARMED)
            w.registered = True

    def disarm(self, w: Watch) -> None:
        """At the first token: a wake-up still pending finds the watch unarmed and does nothing."""
        w.armed = False

    def detach(self, w: Watch) -> None:
        w.armed = False
        self.watches.pop(w.fd, None)
        if w.registered:
            with contextlib.suppress(OSError):
                self.ep.unregister(w.fd)
        os.close(w.fd)


_watcher: _Watcher | None = None


def watcher() -> _Watcher | None:
    """This process's watcher, started on first use (again after a fork); None where there is no
    epoll or no way to start a real thread."""
    global _watcher
    if _watcher is None or _watcher.pid != os.getpid():
        try:
            _watcher = _Watcher()
        except (OSError, RuntimeError, AttributeError):  # no epoll, no thread, no libc recvmsg
            return None
    return _watcher
