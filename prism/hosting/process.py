"""Launching one sidecar plugin process: spawn, handshake, log forwarding, termination.

:class:`PluginProcess` is one launch of a plugin (:mod:`prism.hosting.sidecar` launches them,
a warm standby ahead of need, and stops them only through :meth:`PluginProcess.terminate` or by
cancelling :meth:`PluginProcess.run`: never by pid, which another process may have by then).
The handshake protocol and the environment the plugin receives are described in
:mod:`prism.plugin_protocol.handshake`.

Nothing outlives the proxy:

- the child gets ``PR_SET_PDEATHSIG(SIGKILL)`` (Linux), so the kernel kills it when the proxy
  dies, even by SIGKILL. The kernel fires it when the *thread* that forked the child exits, and
  trio runs ``open_process`` in a worker thread that its thread cache retires after 10 s idle,
  which would kill a healthy plugin. So we fork from the thread running ``trio.run`` (it lives
  exactly as long as the proxy) with ``subprocess.Popen`` and wait on a pidfd ourselves;
- the plugin's stdin is a pipe whose other end only the proxy holds: EOF means the proxy is gone
  (``handshake.watch_parent``, for the plugin's serve()), portable where PDEATHSIG is not;
- the plugin runs in its own process group (so a terminal's Ctrl-C reaches the proxy, which
  then stops plugins in order) and when its leader exits, whatever is left in the group is
  SIGKILLed before the leader is reaped, while its pid cannot have been reused.

The plugin does not inherit the proxy's environment, which may hold the secrets of every
namespace (``{{ env:PG_PASSWORD }}``) and ``/proc/PID/environ`` shows it to the plugin's own
code: :func:`plugin_environment` builds a minimal one. Credentials reach a plugin only in
Initialize, and only its own namespace's.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from signal import Signals

import trio

from prism.hosting.isolation import ResourceLimits, make_preexec
from prism.plugin_protocol.handshake import (
    ENV_MAGIC_COOKIE,
    ENV_PROTOCOL_VERSIONS,
    ENV_SOCKET,
    MAGIC_COOKIE,
    SUPPORTED_PROTOCOL_VERSIONS,
    Handshake,
    HandshakeError,
    PluginStartError,
    check_plugin_socket,
    format_protocol_versions,
    is_handshake_line,
    parse_handshake,
)

_log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # longer plugin output lines are split, so a runaway line cannot eat memory
_DRAIN_GRACE = 1.0  # for a dead plugin's last lines, in case a descendant kept the pipes open
_KILL_REAP_GRACE = 5.0  # SIGKILL is not ignorable; only a process stuck in the kernel lasts this
_POLL_INTERVAL = 0.05  # exit polling where pidfd_open is unavailable (not Linux >= 5.3)
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}
_LEVELS |= {"ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


@dataclass(frozen=True)
class PluginSpec:
    name: str
    command: Sequence[str]
    # The plugin's environment (plugin_environment): ENV_ALLOWLIST, plus these names when the
    # proxy has them, plus these explicit values; never the proxy's whole environment.
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: Sequence[str] = ()
    cwd: Path | None = None
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    protocol_versions: tuple[int, ...] = SUPPORTED_PROTOCOL_VERSIONS
    startup_grace: float = 30.0  # launch to handshake; a caller's tighter scope still wins
    stop_grace: float = 5.0  # SIGTERM to SIGKILL

    def __post_init__(self) -> None:
        if isinstance(self.command, str):  # a str is a Sequence[str] too, of characters
            raise TypeError("PluginSpec.command is a list of arguments, not a string")
        if not self.name or not self.command:
            raise ValueError("a PluginSpec needs a name and a non-empty command")
        if isinstance(self.inherit_env, str):
            raise TypeError("PluginSpec.inherit_env is a list of variable names, not a string")
        for name in (*self.env, *self.inherit_env):
            _check_env_name(name)
        for name, value in self.env.items():
            if "\0" in value:
                raise ValueError(f"environment variable {name}: its value contains a NUL byte")


#: What a sidecar inherits from the proxy's environment, when the proxy has it. Locations and
#: locale, never secrets: ``PATH`` (to find a ``command``), ``HOME`` (libraries and Python's user
#: site-packages resolve paths under it), ``TMPDIR``, ``TZ``, ``LANG``/``LANGUAGE``/``LC_*``; and
#: the variables that decide where the interpreter finds its modules, so that the plugin imports
#: what the proxy (which verifies the plugin's files before the launch) found. ``VIRTUAL_ENV``
#: is not among them: a virtualenv's interpreter finds its packages from the ``pyvenv.cfg``
#: beside it, and sidecars run the proxy's own interpreter.
ENV_ALLOWLIST = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "TZ",
        "LANG",
        "LANGUAGE",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSAFEPATH",
        "PYTHONNOUSERSITE",
        "PYTHONUSERBASE",
    }
)
ENV_ALLOWED_PREFIXES = ("LC_",)
_HANDSHAKE_ENV = frozenset({ENV_MAGIC_COOKIE, ENV_PROTOCOL_VERSIONS, ENV_SOCKET})


def _check_env_name(name: str) -> None:
    if not name or "=" in name or "\0" in name:
        raise ValueError(f"{name!r} is not an environment variable name")
    if name in _HANDSHAKE_ENV:
        raise ValueError(f"environment variable {name} is set by the proxy for the handshake")


def plugin_environment(
    spec: PluginSpec, socket_path: Path, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment a sidecar starts with: from ``parent`` (the proxy's environment)
    only :data:`ENV_ALLOWLIST`, ``LC_*`` and ``spec.inherit_env`` (names it does not have are
    skipped, as systemd's ``PassEnvironment=`` does), then ``spec.env``, then the handshake
    variables, which nothing overrides."""
    parent = os.environ if parent is None else parent
    wanted = ENV_ALLOWLIST.union(spec.inherit_env)
    env = {
        name: value
        for name, value in parent.items()
        if name in wanted or name.startswith(ENV_ALLOWED_PREFIXES)
    }
    env.update(spec.env)
    env[ENV_MAGIC_COOKIE] = MAGIC_COOKIE
    env[ENV_SOCKET] = os.fspath(socket_path)
    env[ENV_PROTOCOL_VERSIONS] = format_protocol_versions(spec.protocol_versions)
    return env


@dataclass(frozen=True)
class ExitStatus:
    returncode: int  # negative: killed by that signal, as in subprocess

    @property
    def signal(self) -> Signals | None:
        if self.returncode >= 0:
            return None
        try:
            return Signals(-self.returncode)
        except ValueError:  # e.g. a real-time signal above SIGRTMIN, which has no name
            return None

    def __str__(self) -> str:
        if self.returncode >= 0:
            return f"exit status {self.returncode}"
        sig = self.signal
        return f"killed by {sig.name if sig is not None else f'signal {-self.returncode}'}"


class PluginExitedError(PluginStartError):
    """The plugin exited (or closed stdout) before printing its handshake."""

    def __init__(self, message: str, exit_status: ExitStatus | None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class PluginStartTimeout(PluginStartError):
    """The plugin printed no handshake within its startup grace."""


class _LineReader:
    """Lines from a byte stream; a line longer than ``MAX_LINE`` comes out in pieces."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 or len(self._buffer) >= MAX_LINE or (self._eof and self._buffer):
                cut = end if 0 <= end < MAX_LINE else min(len(self._buffer), MAX_LINE)
                line = bytes(self._buffer[:cut])
                del self._buffer[: cut + 1 if cut == end else cut]
                return line
            if self._eof:
                return None
            data = await self.stream.receive_some(MAX_LINE)
            if data:
                self._buffer += data
            else:
                self._eof = True


class PluginProcess:
    """One launch of a sidecar plugin: :meth:`run` it, read :attr:`exit_status` afterwards."""

    def __init__(self, spec: PluginSpec, *, socket_path: Path, runtime_dir: Path) -> None:
        if len(os.fsencode(socket_path)) > 107:  # sun_path is 108 bytes with its NUL
            raise PluginStartError(f"socket path {socket_path} is too long for a Unix socket")
        self.spec = spec
        self.socket_path = socket_path
        self.runtime_dir = runtime_dir
        self.handshake: Handshake | None = None
        self.exit_status: ExitStatus | None = None
        #: Set the moment the plugin has exited and been reaped (before its last output lines
        #: are drained, which ``run`` then still does): a crash is seen at once.
        self.exited = trio.Event()
        self.logger = logging.getLogger(f"prism.plugin.{spec.name}")
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._stdin: trio.lowlevel.FdStream | None = None
        self._stdout: _LineReader | None = None
        self._stderr: _LineReader | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    async def run(
        self, *, task_status: trio.TaskStatus[Handshake] = trio.TASK_STATUS_IGNORED
    ) -> ExitStatus:
        """Launch the plugin, wait for its handshake, report it, and return when it exits.

        Forwards the plugin's stdout (INFO) and stderr (WARNING) lines to the logger
        ``prism.plugin.<name>`` throughout; a line starting with a level name (``ERROR ...``)
        keeps that level. Raises :class:`PluginStartError` (after reaping)
        when there is no valid handshake within ``spec.startup_grace``.

        Cancellation: terminates the plugin (stdin closed, SIGTERM, ``spec.stop_grace``,
        SIGKILL), reaps it, then re-raises.
        """
        self._spawn()
        assert self._stdout is not None
        assert self._stderr is not None
        try:
            handshake: Handshake | None = None
            failure: PluginStartError | None = None
            async with trio.open_nursery() as output:
                output.start_soon(self._forward, self._stderr, logging.WARNING, "stderr")
                with trio.move_on_after(self.spec.startup_grace) as startup:
                    try:
                        handshake = await self._read_handshake()
                    except HandshakeError as exc:
                        failure = exc
                if handshake is not None:
                    self.handshake = handshake
                    task_status.started(handshake)
                    output.start_soon(self._forward, self._stdout, logging.INFO, "stdout")
                    await self.wait()
                elif failure is None and not startup.cancelled_caught:
                    # stdout closed first: the plugin is exiting; let it finish in its own words.
                    with trio.move_on_after(self.spec.stop_grace):
                        await self.wait()
                await self.terminate(self.spec.stop_grace)
                output.cancel_scope.deadline = trio.current_time() + _DRAIN_GRACE
            if handshake is None:
                raise failure or self._no_handshake_error(startup.cancelled_caught)
            assert self.exit_status is not None
            return self.exit_status
        finally:
            await self.terminate(self.spec.stop_grace)  # a no-op once reaped
            self._close_pipes()

    async def wait(self) -> ExitStatus:
        """Wait for the plugin to exit and reap it. Cancellation: stops waiting, nothing else."""
        popen = self._require_started()
        while popen.returncode is None:
            if self._exited_unreaped(popen.pid):
                # The leader is a zombie, so its pid (= the group id) cannot be reused yet:
                # kill what the plugin left behind, then reap.
                self._signal_group(signal.SIGKILL)
                if popen.poll() is not None:
                    break
            if self._pidfd is not None:
                # A private duplicate: trio allows one waiter per fd, wait() may have several.
                fd = os.dup(self._pidfd)
                try:
                    await trio.lowlevel.wait_readable(fd)
                finally:
                    os.close(fd)
            else:
                await trio.sleep(_POLL_INTERVAL)
        if self.exit_status is None:
            code = popen.returncode
            assert code is not None
            self.exit_status = ExitStatus(code)
            self.exited.set()
        return self.exit_status

    def send_signal(self, sig: int) -> None:
        """Signal the plugin's process group, if the plugin has not been reaped yet."""
        self._require_started()
        self._signal_group(sig)

    async def terminate(self, grace: float) -> ExitStatus | None:
        """Close stdin, SIGTERM, wait up to ``grace``, then SIGKILL; always reaps.

        Cleanup, so not interruptible: shielded, bounded by ``grace`` plus a short reap after
        SIGKILL. Returns None if the plugin was never started.
        """
        if self._popen is None:
            return None
        if self._stdin is not None:
            self._stdin.close()  # EOF on the plugin's stdin: the portable "proxy is going" signal
            self._stdin = None
        if self._popen.returncode is None:
            self._signal_group(signal.SIGTERM)
            with trio.move_on_after(grace, shield=True):
                await self.wait()
        if self._popen.returncode is None:
            self._signal_group(signal.SIGKILL)
            with trio.move_on_after(_KILL_REAP_GRACE, shield=True):
                await self.wait()
        if self._popen.returncode is None:
            _log.error(
                "plugin %s (pid %d) survived SIGKILL; reaping it in a thread",
                self.spec.name,
                self._popen.pid,
            )
            threading.Thread(target=self._popen.wait, daemon=True).start()
        return self.exit_status

    # --- internals ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        # Synchronous on purpose, in the trio thread: see the module docstring (PDEATHSIG).
        if self._popen is not None:
            raise RuntimeError("a PluginProcess is launched once; make a new one to restart")
        env = plugin_environment(self.spec, self.socket_path)
        try:
            preexec = make_preexec(self.spec.limits)
        except ValueError as exc:
            raise PluginStartError(f"plugin {self.spec.name!r}: {exc}") from exc
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self._popen = subprocess.Popen(
                list(self.spec.command),
                stdin=stdin_r,
                stdout=out_w,
                stderr=err_w,
                env=env,
                cwd=self.spec.cwd,
                preexec_fn=preexec,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (stdin_w, out_r, err_r):
                os.close(fd)
            raise PluginStartError(
                f"plugin {self.spec.name!r}: cannot start {self.spec.command[0]!r}: {exc}"
            ) from exc
        finally:
            for fd in (stdin_r, out_w, err_w):  # the child has its copies
                os.close(fd)
        self._stdin = trio.lowlevel.FdStream(stdin_w)
        self._stdout = _LineReader(trio.lowlevel.FdStream(out_r))
        self._stderr = _LineReader(trio.lowlevel.FdStream(err_r))
        try:
            self._pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None  # wait() polls instead
        _log.debug("plugin %s started as pid %d", self.spec.name, self._popen.pid)

    async def _read_handshake(self) -> Handshake | None:
        assert self._stdout is not None
        while (raw := await self._stdout.readline()) is not None:
            line = raw.decode("utf-8", errors="replace")
            if not is_handshake_line(line):
                self._log_line(line, logging.INFO, "stdout")
                continue
            try:
                handshake = parse_handshake(line, offered_versions=self.spec.protocol_versions)
                check_plugin_socket(handshake.socket_path, self.runtime_dir)
            except HandshakeError as exc:
                raise HandshakeError(f"plugin {self.spec.name!r}: {exc}") from exc
            return handshake
        return None

    def _no_handshake_error(self, timed_out: bool) -> PluginStartError:
        name = self.spec.name
        if timed_out:
            return PluginStartTimeout(
                f"plugin {name!r} printed no handshake within {self.spec.startup_grace} s"
            )
        tail = "; ".join(self._stderr_tail) or "(nothing on stderr)"
        return PluginExitedError(
            f"plugin {name!r} exited before its handshake ({self.exit_status}); "
            f"last stderr: {tail}",
            self.exit_status,
        )

    async def _forward(self, reader: _LineReader, level: int, stream: str) -> None:
        while (raw := await reader.readline()) is not None:
            self._log_line(raw.decode("utf-8", errors="replace"), level, stream)

    def _log_line(self, line: str, level: int, stream: str) -> None:
        text = line.rstrip("\r\n")
        if not text.strip():
            return
        if stream == "stderr":
            self._stderr_tail.append(text)
        # A plugin logging with a "%(levelname)s ..." format (as the SDK's runner does) keeps
        # its own levels; anything else gets its stream's level.
        word = text.split(maxsplit=1)[0].rstrip(":")
        level = _LEVELS.get(word, level)
        extra = {"plugin": self.spec.name, "plugin_stream": stream, "plugin_pid": self.pid}
        self.logger.log(level, "%s", text, extra=extra)

    def _exited_unreaped(self, pid: int) -> bool:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped (cannot happen unless someone else reaps our child)
        return info is not None

    def _signal_group(self, sig: int) -> None:
        # Only while our child is unreaped: then its pid, which is the group id, is still ours.
        if self._popen is None or self._popen.returncode is not None:
            return
        try:
            os.killpg(self._popen.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # a member changed uid; at least signal the plugin itself
            self._popen.send_signal(sig)

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError("the plugin process has not been started")
        return self._popen

    def _close_pipes(self) -> None:
        for stream in (self._stdin, self._stdout, self._stderr):
            if stream is not None:
                (stream.stream if isinstance(stream, _LineReader) else stream).close()
        self._stdin = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
