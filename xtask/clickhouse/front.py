"""ClickHouse's HTTP interface in front of the real ClickHouse engine (chdb-core).

This is the local stand-in for a ClickHouse server: the engine is the genuine ClickHouse 26.x
that the chdb-core wheel embeds, and this module speaks ClickHouse's HTTP protocol on loopback
so that clients (the official `clickhouse` Rust crate, curl) use it exactly as they would use a
server. What a server does that an embedded engine does not (users and passwords, readonly
users, one statement per request, per-request settings, native compressed insert blocks,
HTTP compression, error statuses) is done here.

Refused logins (the front's stand-in for system.session_log's LoginFailure rows):
    GET /_front/login_failures (any valid user) answers {"login_failures": {user: count}}:
    refused logins per user name since the front started.

Running queries (the front's stand-in for system.processes):
    GET /_front/processes (any valid user) answers, without waiting for the engine, with the
    requests in progress: {"processes": [{"query_id": "...", "user": "...", "elapsed": 0.12,
    "state": "waiting" | "running", "is_cancelled": false}]}. "waiting" is queued for the
    engine (queries run one at a time here, unlike on a server), "running" holds it. A query
    leaves the list when the engine has let go of it, as it leaves system.processes.

Client hang-ups (cancel_http_readonly_queries_on_client_close):
    As on a server, a read-only request (readonly > 0, which every GET is) with this setting at
    1 is cancelled when its client closes the connection: a waiting query leaves the queue and a
    running one is killed in the engine, which notices the kill between blocks, and inside
    sleep() between one-second slices. A server peeks at the client's socket whenever the query
    reports progress (rows read); the front watches it all along, so it also stops a query that
    reads nothing for a while (a lone sleep()), which a server leaves running.
    max_execution_time is the engine's own, and stops sleep() too.

Environment:
    CHFRONT_HOST   address to bind (default 127.0.0.1)
    CHFRONT_PORT   port to bind (default 8123)
    CHFRONT_DATA   the engine's data folder (kept between runs)
    CHFRONT_USERS  users file, JSON {"users": {"name": {"password": "...", "readonly": 0}}},
                   re-read whenever it changes (so password rotation takes effect at once)
"""

import base64
import hmac
import json
import os
import random
import re
import select
import signal
import socket
import string
import sys
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb  # noqa: F401  (imported for its side effect of loading the engine early)
import lz4.block
import lz4.frame
from chdb import session as chdb_session
from clickhouse_cityhash.cityhash import CityHash128

# The engine answers one query at a time: chdb allows one embedded server per process, and the
# front's requests share one engine session whose current database and settings each request
# changes and restores, so every use of that session holds this lock.
ENGINE_LOCK = threading.Lock()

# A request queued for the engine looks at its cancellation this often (threading.Lock cannot
# be woken by another thread, so the wait is taken in slices).
ENGINE_WAIT_SLICE_SECONDS = 0.05

# The watcher's poll of client sockets is renewed this often, taking in requests that started
# since (a hang-up of a socket already polled wakes it at once).
WATCH_POLL_SECONDS = 0.05

# While a cancelled query is still in the engine its kill is repeated this often: a kill sent
# just before the statement reached the engine finds nothing to stop.
KILL_RETRY_SECONDS = 0.1

# Like a server's output buffer: results up to this size are held back so that an error in
# them still gets a proper status; bigger results stream and a late error is appended to the
# body the way ClickHouse does it.
RESPONSE_BUFFER_BYTES = 1 << 20

# After a failed insert, at most this much of the rest of the body is read so that the client
# gets the error rather than a reset connection.
DRAIN_LIMIT_BYTES = 256 << 20

# URL parameters that are not settings (ClickHouse's HTTPHandler reserves the same names).
RESERVED_PARAMS = {
    "query", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "compress", "decompress", "user", "password", "quota_key", "buffer_size",
    "wait_end_of_query", "role", "stacktrace", "readonly", "default_database",
}

# Which exception names get which status, after ClickHouse's exceptionCodeToHTTPStatus.
STATUS_BY_NAME = {}
for _name in ("REQUIRED_PASSWORD",):
    STATUS_BY_NAME[_name] = 401
for _name in ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
              "ACCESS_DENIED"):
    STATUS_BY_NAME[_name] = 403
for _name in ("BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
              "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE",
              "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
              "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
              "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN",
              "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE",
              "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE",
              "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
              "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"):
    STATUS_BY_NAME[_name] = 400
for _name in ("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
              "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING",
              "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT",
              "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"):
    STATUS_BY_NAME[_name] = 404
STATUS_BY_NAME.update({
    "QUERY_IS_TOO_LARGE": 413, "NOT_IMPLEMENTED": 501, "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503, "HTTP_LENGTH_REQUIRED": 411, "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503, "UNSUPPORTED_MEDIA_TYPE": 415,
})

CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNames": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
}

EXCEPTION_RE = re.compile(r"Code: (\d+)\. (DB::Exception: .*)", re.S)
NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*\)+)?\s*$")
FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.I)
SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
READ_ONLY_STATEMENTS = {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "("}
# The engine streams results of these only; the other read-only statements return small results.
STREAMED_STATEMENTS = {"SELECT", "WITH", "("}


class ClickHouseError(Exception):
    """An exception as ClickHouse reports it: a code, its name and a message."""

    def __init__(self, code, name, message):
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    def status(self):
        return STATUS_BY_NAME.get(self.name, 500)

    def body(self, version):
        text = f"Code: {self.code}. DB::Exception: {self.message} ({self.name})"
        return f"{text} (version {version} (official build))\n".encode()


class Engine:
    """The embedded ClickHouse engine, its error-code table and version."""

    def __init__(self, data_dir):
        self.session = chdb_session.Session(data_dir)
        rows = self.session.query(
            "SELECT name, code FROM system.errors SETTINGS system_events_show_zero_values = 1",
            "TabSeparated").bytes().decode()
        self.codes = {}
        for line in rows.splitlines():
            name, code = line.split("\t")
            self.codes[name] = int(code)
        self.version = self.session.query("SELECT version()", "TabSeparated").bytes().decode().strip()
        self.timezone = self.session.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()
        # A second session on the same engine, used only to kill: a query holds its session
        # (chdb's per-connection mutex) until the engine returns, and a stream's own cancel()
        # waits for that mutex, so it cannot interrupt a block in progress. KILL QUERY from
        # another session can, and does not need ENGINE_LOCK.
        self.control = chdb_session.Session(data_dir)
        self.control_lock = threading.Lock()

    def kill_running(self):
        """Kills what the front's session is running. Only that session runs queries (one at a
        time, under ENGINE_LOCK) and the control session runs nothing but this KILL, so every
        query but the KILL itself belongs to the request being cancelled; the caller makes sure
        that request is still in its statement (see Process.executing)."""
        with self.control_lock:
            self.control.query(
                "KILL QUERY WHERE query_id != queryID() AND is_initial_query ASYNC", "TabSeparated")

    def close(self):
        self.control.close()
        self.session.close()

    def error(self, name, message):
        return ClickHouseError(self.codes.get(name, 1001), name, message)

    def translate(self, exc):
        """Turns an engine exception into a ClickHouseError (chdb wraps them in its own text)."""
        text = str(exc)
        match = EXCEPTION_RE.search(text)
        if not match:
            return ClickHouseError(1001, "STD_EXCEPTION", text.strip())
        code = int(match.group(1))
        message = match.group(2)[len("DB::Exception: "):].strip()
        name_match = NAME_RE.search(message)
        name = name_match.group(1) if name_match else "UNKNOWN_EXCEPTION"
        if name_match:
            message = message[:name_match.start()].rstrip()
        return ClickHouseError(code, name, message)


class Users:
    """The users file, read afresh for every request: it is tiny, and reading it each time
    means a rotated password applies to the very next request, whatever the file's timestamps."""

    def __init__(self, path):
        self.path = path
        self.users = {}
        self.lock = threading.Lock()

    def lookup(self, name):
        with self.lock:
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.users = json.load(f)["users"]
            except (OSError, ValueError, KeyError) as exc:
                # A half-written file keeps the last good table rather than locking everyone out.
                print(f"front: cannot read users file {self.path}: {exc}", file=sys.stderr)
            return self.users.get(name)


class ClientGone(ConnectionAbortedError):
    """The client closed its connection and its query was cancelled: nobody to answer."""

    def __init__(self):
        super().__init__("client closed the connection; its query was cancelled")


class Process:
    """One request in progress, as a row of system.processes: waiting for the engine, then
    running in it, until its answer is written."""

    def __init__(self, query_id, user):
        self.query_id = query_id
        self.user = user
        self.started = time.monotonic()
        self.state = "waiting"
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        # Orders a kill against the statement's start and end: the engine is only asked to kill
        # while this request's statement is in it (never its settings' reset that follows).
        self.lock = threading.Lock()
        self.in_statement = False

    def row(self, now):
        return {"query_id": self.query_id, "user": self.user,
                "elapsed": round(now - self.started, 6), "state": self.state,
                "is_cancelled": self.cancelled.is_set()}

    def wait_for_engine(self):
        """Takes ENGINE_LOCK, or raises ClientGone if the client leaves the queue first."""
        while not ENGINE_LOCK.acquire(timeout=ENGINE_WAIT_SLICE_SECONDS):
            if self.cancelled.is_set():
                raise ClientGone()
        if self.cancelled.is_set():
            ENGINE_LOCK.release()
            raise ClientGone()
        self.state = "running"

    @contextmanager
    def executing(self):
        """Marks the stretch in which the engine runs this request's statement (killable)."""
        with self.lock:
            if self.cancelled.is_set():
                raise ClientGone()
            self.in_statement = True
        try:
            yield
        finally:
            with self.lock:
                self.in_statement = False

    def kill_if_executing(self, engine):
        """Kills the statement if it is in the engine; False once the request has ended."""
        with self.lock:
            if self.finished.is_set():
                return False
            if self.in_statement:
                try:
                    engine.kill_running()
                except Exception as exc:  # noqa: BLE001 - retried while the request lasts
                    print(f"front: cannot kill query {self.query_id}: {exc}", file=sys.stderr)
            return True

    def finish(self):
        with self.lock:
            self.finished.set()


class ProcessList:
    """The requests in progress by query id. Read without ENGINE_LOCK, so it answers while a
    query runs; a second query with an id in progress is refused, as ClickHouse does."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_id = {}

    def add(self, query_id, user):
        """A new Process, or None if a request with this id is in progress."""
        with self.lock:
            if query_id in self.by_id:
                return None
            process = self.by_id[query_id] = Process(query_id, user)
            return process

    def remove(self, process):
        with self.lock:
            if self.by_id.get(process.query_id) is process:
                del self.by_id[process.query_id]

    def rows(self):
        now = time.monotonic()
        with self.lock:
            return [process.row(now) for process in self.by_id.values()]


PROCESSES = ProcessList()


class HangUpWatcher:
    """Cancels read-only queries whose clients hang up, like a server with
    cancel_http_readonly_queries_on_client_close (which peeks at the socket the same way).

    One thread polls the sockets of every watched request, waiting or running: most queries
    end within milliseconds, and a thread of their own would cost more than they do. A request
    registered during a poll is looked at from the next one (WATCH_POLL_SECONDS)."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.watched = {}  # Process -> its client's socket
        self.has_work = threading.Event()
        threading.Thread(target=self.run, name="hang-up-watcher", daemon=True).start()

    def watch(self, sock, process):
        with self.lock:
            self.watched[process] = sock
            self.has_work.set()

    def unwatch(self, process):
        with self.lock:
            self.watched.pop(process, None)

    def run(self):
        while True:
            self.has_work.wait()
            with self.lock:
                watched = list(self.watched.items())
                if not watched:
                    self.has_work.clear()
                    continue
            poller, by_fd = select.poll(), {}
            for process, sock in watched:
                fd = sock.fileno()
                if fd >= 0:
                    poller.register(fd, select.POLLIN)
                    by_fd[fd] = (sock, process)
            for fd, mask in poller.poll(WATCH_POLL_SECONDS * 1000):
                sock, process = by_fd[fd]
                if self.hung_up(sock, process, mask):
                    process.cancelled.set()
                    # Killing takes engine calls: not on this thread, which watches the others.
                    threading.Thread(target=self.kill, args=(process,), daemon=True).start()
                # Whatever the socket said, there is nothing more to learn from it: a hang-up is
                # handled, and bytes of a next (pipelined) request mean the client is there and
                # keep the socket readable until the handler reads them, as on a server.
                self.unwatch(process)

    @staticmethod
    def hung_up(sock, process, mask):
        """Whether the client of a socket that polled readable has closed it."""
        # Under the process lock: once the request has ended its handler may read the next
        # request from this socket, or close it and the number go to another connection, so
        # only an unfinished request's socket is still the one polled.
        with process.lock:
            if process.finished.is_set():
                return False
            if mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
            try:
                # Only peeks: the bytes of a next request stay for the handler to read.
                return sock.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True  # reset by the peer

    def kill(self, process):
        # A queued request sees the flag itself; a running statement is killed, again until the
        # request has left the engine (the first kill may come before the statement starts).
        while process.kill_if_executing(self.engine):
            process.finished.wait(KILL_RETRY_SECONDS)


class Body:
    """A request body, read incrementally: Content-Length, or chunked transfer encoding."""

    def __init__(self, rfile, headers):
        self.rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.remaining = int(headers.get("Content-Length") or 0)
        self.chunk_left = 0
        self.done = not self.chunked and self.remaining == 0

    def read(self, size=65536):
        """Returns up to `size` bytes, or b"" at the end."""
        if self.done:
            return b""
        if not self.chunked:
            data = self.rfile.read(min(size, self.remaining))
            if not data:
                raise ConnectionError("request body ended early")
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        if self.chunk_left == 0:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("request body ended early")
            self.chunk_left = int(line.split(b";")[0].strip() or b"0", 16)
            if self.chunk_left == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
        data = self.rfile.read(min(size, self.chunk_left))
        if not data:
            raise ConnectionError("request body ended early")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(16)  # CRLF after the chunk
        return data

    def read_all(self):
        parts = []
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def drain(self, limit=None):
        seen = 0
        while limit is None or seen < limit:
            data = self.read()
            if not data:
                return
            seen += len(data)


class ExactReader:
    """Reads exact byte counts from a chunk source (for the native block format)."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.buffer = bytearray()

    def read_exact(self, size):
        while len(self.buffer) < size:
            data = self.chunks()
            if not data:
                if not self.buffer:
                    return None
                raise EOFError("compressed block cut short")
            self.buffer += data
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out


def native_blocks(chunks, engine):
    """Decodes ClickHouse's native compressed blocks (decompress=1), checking each checksum."""
    reader = ExactReader(chunks)
    while True:
        checksum = reader.read_exact(16)
        if checksum is None:
            return
        header = reader.read_exact(9)
        if header is None:
            raise engine.error("CANNOT_DECOMPRESS", "compressed block header cut short")
        method = header[0]
        compressed_size = int.from_bytes(header[1:5], "little")
        raw_size = int.from_bytes(header[5:9], "little")
        if compressed_size < 9 or compressed_size > (1 << 30) or raw_size > (1 << 30):
            raise engine.error("TOO_LARGE_SIZE_COMPRESSED", "too large size of compressed block")
        payload = reader.read_exact(compressed_size - 9)
        if payload is None:
            raise engine.error("CANNOT_DECOMPRESS", "compressed block cut short")
        digest = CityHash128(header + payload)
        expected = (digest >> 64).to_bytes(8, "little") + (digest & ((1 << 64) - 1)).to_bytes(8, "little")
        if expected != checksum:
            raise engine.error("CHECKSUM_DOESNT_MATCH", "checksum doesn't match: corrupted data")
        if method == 0x82:
            yield lz4.block.decompress(payload, uncompressed_size=raw_size)
        elif method == 0x02:
            yield payload
        else:
            raise engine.error("UNKNOWN_COMPRESSION_METHOD", f"unknown compression method 0x{method:02x}")


def split_statements(sql):
    """Returns the statements of `sql` (text between top-level semicolons), ignoring
    semicolons inside quotes and comments, and dropping empty ones."""
    statements, start, i, n = [], 0, 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            i += 1
            while i < n and sql[i] != ch:
                i += 2 if sql[i] == "\\" else 1
        elif sql.startswith("--", i) or ch == "#":
            while i < n and sql[i] != "\n":
                i += 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 1
        elif ch == ";":
            statements.append(sql[start:i])
            start = i + 1
        i += 1
    statements.append(sql[start:])
    return [s for s in statements if strip_comments(s).strip()]


def strip_comments(sql):
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"(--|#)[^\n]*", " ", sql)


def first_keyword(sql):
    text = strip_comments(sql).lstrip()
    if text.startswith("("):
        return "("
    match = re.match(r"[A-Za-z]+", text)
    return match.group(0).upper() if match else ""


def sql_string(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_multipart(body, content_type):
    """Returns the fields of a multipart/form-data body as {name: bytes}."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("multipart request without a boundary")
    delimiter = b"--" + match.group(1).encode()
    fields = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


class Request:
    """What one HTTP request asks of the engine, parsed from URL, headers and body."""

    def __init__(self, handler):
        self.handler = handler
        url = urlsplit(handler.path)
        self.path = url.path
        self.params = dict(parse_qsl(url.query, keep_blank_values=True))
        self.headers = handler.headers
        self.body = Body(handler.rfile, handler.headers)
        self.form = {}

    def credentials(self):
        user = self.headers.get("X-ClickHouse-User")
        key = self.headers.get("X-ClickHouse-Key")
        auth = self.headers.get("Authorization", "")
        if user is None and auth.lower().startswith("basic "):
            try:
                user, _, key = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except ValueError:
                user, key = "", None
        if user is None and "user" in self.params:
            user, key = self.params["user"], self.params.get("password", "")
        if user is None:
            user = "default"
        return user, key or ""


# Refused logins per user name, for GET /_front/login_failures.
LOGIN_FAILURES = {}
LOGIN_FAILURES_LOCK = threading.Lock()


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Nagle's algorithm with delayed ACKs adds ~40 ms to every small response.
    disable_nagle_algorithm = True
    def version_string(self):
        return "chgate-local-clickhouse"
    # Idle keep-alive connections are closed after this many seconds, like a server would.
    timeout = 30

    engine: Engine = None
    users: Users = None
    watcher: HangUpWatcher = None

    def log_message(self, fmt, *args):
        if os.environ.get("CHFRONT_LOG"):
            super().log_message(fmt, *args)

    def do_GET(self):
        self.handle_request(read_only_method=True)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.handle_request(read_only_method=False)

    def handle_request(self, read_only_method):
        request = Request(self)
        query_id = request.params.get("query_id") or str(uuid.uuid4())
        self.response_started = False
        try:
            if request.path in ("/ping", "/replicas_status") or (
                    read_only_method and request.path == "/" and not request.params.get("query")):
                self.send_plain(200, b"Ok.\n")
                return
            if read_only_method and request.path == "/_front/processes":
                self.authenticate(request)
                self.send_json(200, {"processes": PROCESSES.rows()})
                return
            if read_only_method and request.path == "/_front/login_failures":
                # The front's stand-in for system.session_log's LoginFailure rows.
                self.authenticate(request)
                with LOGIN_FAILURES_LOCK:
                    self.send_json(200, {"login_failures": dict(LOGIN_FAILURES)})
                return
            if request.path != "/":
                request.body.drain()
                self.send_plain(404, b"There is no handle " + request.path.encode() + b"\n")
                return
            self.execute(request, query_id, read_only_method)
        except ClickHouseError as exc:
            self.fail(exc, query_id, request)
        except (ConnectionError, EOFError, socket.timeout) as exc:
            print(f"front: connection dropped: {exc!r}", file=sys.stderr)
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - the engine raises plain exceptions
            self.fail(self.engine.translate(exc), query_id, request)

    def fail(self, exc, query_id, request=None):
        body = exc.body(self.engine.version)
        if request is not None and not self.response_started:
            # A client still sending would see a reset instead of the error: read on (bounded).
            try:
                request.body.drain(limit=DRAIN_LIMIT_BYTES)
            except (ConnectionError, OSError, ValueError):
                pass
        if self.response_started:
            # Too late for a status: ClickHouse (25.11+) appends the exception to the
            # (compressed) body between markers carrying the response's exception tag, and
            # closes the connection.
            message = body.rstrip(b"\n") + b"\n"
            trailer = (b"\r\n__exception__\r\n" + self.exception_tag + b"\r\n" + message
                       + str(len(message)).encode() + b" " + self.exception_tag + b"\r\n__exception__\r\n")
            self.write_encoded(trailer)
            self.finish_encoded()
            self.end_chunks()
            self.close_connection = True
            return
        # The rest of an unread body cannot be skipped reliably: close after answering.
        self.close_connection = True
        self.send_response(exc.status())
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("X-ClickHouse-Exception-Code", str(exc.code))
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Server-Display-Name", "chgate-local")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, value):
        body = json.dumps(value, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_plain(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- authentication and readonly ------------------------------------------------------

    def authenticate(self, request):
        """The user's name and readonly level, or AUTHENTICATION_FAILED."""
        user, key = request.credentials()
        entry = self.users.lookup(user)
        password = entry.get("password", "") if isinstance(entry, dict) else None
        if password is None or not hmac.compare_digest(password.encode(), key.encode()):
            with LOGIN_FAILURES_LOCK:
                LOGIN_FAILURES[user] = LOGIN_FAILURES.get(user, 0) + 1
            raise self.engine.error(
                "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, or there is no user "
                "with such name")
        return user, int(entry.get("readonly", 0))

    def readonly_level(self, request, user_readonly, read_only_method, settings):
        level = user_readonly
        if "readonly" in request.params:
            try:
                asked = int(request.params["readonly"])
            except ValueError:
                raise self.engine.error("CANNOT_PARSE_NUMBER", "cannot parse readonly value")
            if user_readonly == 1 and asked != 1:
                raise self.engine.error("READONLY", "Cannot modify 'readonly' setting in readonly mode")
            level = max(level, asked) if level else asked
        if read_only_method and level == 0:
            level = 2  # GET requests are read-only, as on a server
        if level == 1 and settings:
            name = next(iter(settings))
            raise self.engine.error("READONLY", f"Cannot modify '{name}' setting in readonly mode")
        return level

    # -- execution ------------------------------------------------------------------------

    def execute(self, request, query_id, read_only_method):
        user, user_readonly = self.authenticate(request)
        content_type = self.headers.get("Content-Type", "")
        if "multipart/form-data" in content_type:
            request.form = parse_multipart(self.read_body(request), content_type)
            body_data = b""
        else:
            body_data = None  # read later: it may be insert data to stream

        params = {k[len("param_"):]: v for k, v in request.params.items() if k.startswith("param_")}
        for name, value in request.form.items():
            if name.startswith("param_"):
                params[name[len("param_"):]] = value.decode("utf-8", "surrogateescape")
        settings = {k: v for k, v in request.params.items()
                    if k not in RESERVED_PARAMS and not k.startswith("param_")}
        for name in settings:
            if not SETTING_NAME_RE.match(name):
                raise self.engine.error("UNKNOWN_SETTING", f"Unknown setting '{name}'")

        url_query = request.params.get("query") or request.form.get("query", b"").decode()
        readonly = self.readonly_level(request, user_readonly, read_only_method, settings)

        insert_format = None
        if url_query and body_data is None:
            head = split_statements(url_query)
            if len(head) == 1 and first_keyword(head[0]) == "INSERT":
                match = FORMAT_RE.search(head[0].strip())
                if match:
                    insert_format = match.group(1)
        if insert_format is None and body_data is None:
            body_data = self.read_body(request)
        if insert_format is not None:
            sql = url_query.strip().rstrip(";")
        elif url_query and body_data:
            sql = url_query + "\n" + body_data.decode("utf-8", "surrogateescape")
        else:
            sql = url_query or (body_data or b"").decode("utf-8", "surrogateescape")

        statements = split_statements(sql) if insert_format is None else [sql]
        if not statements:
            raise self.engine.error("SYNTAX_ERROR", "Empty query")
        if len(statements) > 1:
            raise self.engine.error("SYNTAX_ERROR", "Multi-statements are not allowed")
        statement = statements[0]
        keyword = first_keyword(statement)
        if readonly and keyword not in READ_ONLY_STATEMENTS:
            raise self.engine.error("READONLY", "Cannot execute query in readonly mode")

        output_format = request.params.get("default_format") or "TabSeparated"
        trailing = FORMAT_RE.search(statement.strip()) if keyword != "INSERT" else None
        if trailing:
            output_format = trailing.group(1)

        process = PROCESSES.add(query_id, user)
        if process is None:
            raise self.engine.error(
                "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING", f"Query with id = {query_id} is already running.")
        self.process = process
        try:
            # A server cancels only read-only queries on a hang-up: a write may have been
            # committed in part. Inserts read their body while they run, so are never watched.
            if (readonly > 0 and insert_format is None
                    and settings.get("cancel_http_readonly_queries_on_client_close", "").lower() in ("1", "true")):
                self.watcher.watch(self.connection, process)
            self.run_locked(request, statement, keyword, insert_format, settings, output_format, params, query_id)
        except Exception:
            # The engine's "Query was cancelled" (or a write to the closed socket) after a
            # hang-up: there is nobody to tell.
            if process.cancelled.is_set():
                raise ClientGone() from None
            raise
        finally:
            process.finish()
            self.watcher.unwatch(process)
            PROCESSES.remove(process)

    def run_locked(self, request, statement, keyword, insert_format, settings, output_format, params, query_id):
        self.process.wait_for_engine()
        try:
            applied = []
            database = request.params.get("database") or request.params.get("default_database")
            # The session rests in `default`; switching costs two engine calls, so only when needed.
            database = None if database == "default" else database
            try:
                if database:
                    self.engine.session.query(f"USE {quote_identifier(database)}")
                for name, value in settings.items():
                    if name.startswith("SQL_"):
                        # A server's custom settings (custom_settings_prefixes): accepted, but
                        # the embedded engine has no such prefix, so they are not applied.
                        continue
                    self.engine.session.query(f"SET {name} = {sql_string(value)}")
                    applied.append(name)
                with self.process.executing():
                    if keyword == "SET":
                        # Without a session a SET lasts for its own request only: nothing to do.
                        self.send_result(request, query_id, output_format, [b""], {})
                    elif insert_format is not None:
                        self.stream_insert(request, statement, insert_format, query_id)
                    elif keyword in STREAMED_STATEMENTS:
                        self.stream_select(request, statement, output_format, params, query_id)
                    else:
                        result = self.engine.session.query(statement, output_format, params=params or None)
                        self.send_result(request, query_id, output_format, [result.bytes()], {
                            "written_rows": result.rows_written(), "written_bytes": result.bytes_written(),
                            "read_rows": result.rows_read(), "read_bytes": result.bytes_read()})
            finally:
                # Each reset on its own: one failing must neither hide the request's error nor
                # leave the remaining settings for the next request.
                for name in applied:
                    try:
                        self.engine.session.query(f"SET {name} = DEFAULT")
                    except Exception as exc:  # noqa: BLE001
                        print(f"front: cannot reset setting {name}: {exc}", file=sys.stderr)
                if database:
                    try:
                        self.engine.session.query("USE default")
                    except Exception as exc:  # noqa: BLE001
                        print(f"front: cannot return to database default: {exc}", file=sys.stderr)
        finally:
            ENGINE_LOCK.release()

    def read_body(self, request):
        data = request.body.read_all()
        return decode_content(data, self.headers.get("Content-Encoding", ""), self.engine)

    def stream_insert(self, request, statement, insert_format, query_id):
        head = FORMAT_RE.sub("", statement.strip()).strip()
        chunks = request.body.read
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding:
            data = decode_content(request.body.read_all(), encoding, self.engine)
            chunks = iter([data, b""]).__next__
        if request.params.get("decompress") == "1":
            blocks = native_blocks(chunks, self.engine)
            chunks = lambda: next(blocks, b"")  # noqa: E731
        inserter = self.engine.session.send_insert(head, insert_format)
        try:
            pending, size = [], 0
            while True:
                data = chunks()
                if data:
                    pending.append(data)
                    size += len(data)
                if size >= RESPONSE_BUFFER_BYTES or (not data and pending):
                    inserter.append(b"".join(pending))
                    pending, size = [], 0
                if not data:
                    break
            result = inserter.finish()
        except BaseException:
            try:
                inserter.cancel()
            except Exception:  # noqa: BLE001 - cancelling a failed insert may fail too
                pass
            raise
        self.send_result(request, query_id, insert_format, [b""], {
            "written_rows": result.rows_written, "written_bytes": result.bytes_written})

    def stream_select(self, request, statement, output_format, params, query_id):
        """Runs a SELECT, streaming formats whose blocks can be concatenated (see
        `chunk_header_length`) and returning others whole."""
        skip_header = chunk_header_length(output_format)
        if skip_header is None:
            result = self.engine.session.query(statement, output_format, params=params or None)
            self.send_result(request, query_id, output_format, [result.bytes()], {
                "read_rows": result.rows_read(), "read_bytes": result.bytes_read()})
            return
        wait_end = request.params.get("wait_end_of_query") == "1"
        stream = self.engine.session.send_query(statement, output_format, params=params or None)
        try:
            held, size, stats, first = [], 0, {"read_rows": 0, "read_bytes": 0}, True
            for chunk in stream:
                if self.process.cancelled.is_set():
                    raise ClientGone()  # noticed between blocks: no need to wait for a kill
                data = chunk.bytes()
                stats["read_rows"] += chunk.rows_read()
                stats["read_bytes"] += chunk.bytes_read()
                # The engine formats every block on its own; a server writes one header.
                if not first:
                    data = data[skip_header(data):]
                first = False
                if self.response_started:
                    self.write_encoded(data)
                    continue
                held.append(data)
                size += len(data)
                if size >= RESPONSE_BUFFER_BYTES and not wait_end:
                    self.start_response(request, query_id, output_format, stats, chunked=True)
                    for part in held:
                        self.write_encoded(part)
                    held = []
            if self.response_started:
                self.finish_encoded()
                self.end_chunks()
                return
        finally:
            stream.close()
        if first:
            # No block at all: a server still writes the format's header (names and types),
            # which only the non-streaming call produces.
            held = [self.engine.session.query(statement, output_format, params=params or None).bytes()]
        self.send_result(request, query_id, output_format, held, stats)

    # -- responses --------------------------------------------------------------------------

    def choose_encoding(self, request):
        if request.params.get("enable_http_compression", "1") != "1":
            return None
        accepted = [e.split(";")[0].strip().lower()
                    for e in self.headers.get("Accept-Encoding", "").split(",")]
        for name in ("lz4", "gzip", "deflate"):
            if name in accepted:
                return name
        return None

    def start_response(self, request, query_id, output_format, stats, chunked):
        """Sends the status line and headers; a chunked response is open for writing after it,
        a sized one still needs its Content-Length and end_headers."""
        self.encoding = self.choose_encoding(request)
        self.encoder = make_encoder(self.encoding)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(output_format, "application/octet-stream"))
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Format", output_format)
        self.send_header("X-ClickHouse-Timezone", self.engine.timezone)
        self.send_header("X-ClickHouse-Server-Display-Name", "chgate-local")
        self.send_header("X-ClickHouse-Summary", summary(stats))
        if self.encoding:
            self.send_header("Content-Encoding", self.encoding)
        if chunked:
            # A streamed response may still fail; the tag lets clients find the exception.
            self.exception_tag = "".join(random.choices(string.ascii_letters + string.digits, k=16)).encode()
            self.send_header("X-ClickHouse-Exception-Tag", self.exception_tag.decode())
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.response_started = True

    def send_result(self, request, query_id, output_format, parts, stats):
        body = b"".join(parts)
        self.start_response(request, query_id, output_format, stats, chunked=False)
        if self.encoder and body:
            body = self.encoder.compress(body) + self.encoder.flush()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def write_encoded(self, data):
        self.write_chunk(self.encoder.compress(data) if self.encoder else data)

    def finish_encoded(self):
        if self.encoder:
            self.write_chunk(self.encoder.flush())

    def write_chunk(self, data):
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")


def chunk_header_length(output_format):
    """For a format the engine can stream, a function giving the length of the header that
    starts each block's output (to drop from every block but the first); None for formats
    whose output is not a concatenation of blocks (JSON, Parquet, Pretty, ...)."""
    if output_format in ("RowBinaryWithNamesAndTypes", "RowBinaryWithNames"):
        strings_per_column = 2 if output_format.endswith("Types") else 1
        return lambda data: rowbinary_header_length(data, strings_per_column)
    for suffix, lines in (("WithNamesAndTypes", 2), ("WithNames", 1)):
        if output_format.endswith(suffix) and output_format[:-len(suffix)] in TEXT_ROW_FORMATS:
            return lambda data, lines=lines: text_header_length(data, lines)
    if output_format in TEXT_ROW_FORMATS or output_format in BINARY_ROW_FORMATS:
        return lambda data: 0
    return None


TEXT_ROW_FORMATS = {"TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "CSV",
                    "CustomSeparated", "JSONEachRow", "JSONCompactEachRow", "JSONStringsEachRow",
                    "JSONCompactStringsEachRow", "NDJSON", "JSONLines", "TSKV", "LineAsString"}
BINARY_ROW_FORMATS = {"RowBinary"}


def read_varint(data, pos):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def rowbinary_header_length(data, strings_per_column):
    columns, pos = read_varint(data, 0)
    for _ in range(columns * strings_per_column):
        length, pos = read_varint(data, pos)
        pos += length
    return pos


def text_header_length(data, lines):
    pos = 0
    for _ in range(lines):
        pos = data.index(b"\n", pos) + 1
    return pos


class _Lz4Encoder:
    def __init__(self):
        self.inner = lz4.frame.LZ4FrameCompressor()
        self.started = False

    def compress(self, data):
        head = b""
        if not self.started:
            head, self.started = self.inner.begin(), True
        return head + self.inner.compress(data)

    def flush(self):
        head = b"" if self.started else self.inner.begin()
        self.started = True
        return head + self.inner.flush()


def make_encoder(encoding):
    if encoding == "lz4":
        return _Lz4Encoder()
    if encoding == "gzip":
        return zlib.compressobj(wbits=31)
    if encoding == "deflate":
        return zlib.compressobj()
    return None


def decode_content(data, encoding, engine):
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return data
        if encoding == "gzip":
            return zlib.decompress(data, 31)
        if encoding == "deflate":
            return zlib.decompress(data)
        if encoding == "lz4":
            return lz4.frame.decompress(data)
    except (zlib.error, RuntimeError) as exc:
        raise engine.error("CANNOT_DECOMPRESS", f"cannot decompress request body: {exc}")
    raise engine.error("UNKNOWN_COMPRESSION_METHOD", f"Unknown HTTP content encoding '{encoding}'")


def quote_identifier(name):
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def summary(stats):
    keys = ("read_rows", "read_bytes", "written_rows", "written_bytes", "total_rows_to_read",
            "result_rows", "result_bytes", "elapsed_ns")
    return json.dumps({k: str(stats.get(k, 0)) for k in keys}, separators=(",", ":"))


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def main():
    host = os.environ.get("CHFRONT_HOST", "127.0.0.1")
    port = int(os.environ.get("CHFRONT_PORT", "8123"))
    data_dir = os.environ["CHFRONT_DATA"]
    os.makedirs(data_dir, exist_ok=True)
    FrontHandler.engine = Engine(data_dir)
    FrontHandler.users = Users(os.environ["CHFRONT_USERS"])
    FrontHandler.watcher = HangUpWatcher(FrontHandler.engine)
    server = FrontServer((host, port), FrontHandler)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"front: ClickHouse {FrontHandler.engine.version} on http://{host}:{server.server_port}",
          flush=True)
    server.serve_forever(poll_interval=0.2)
    with ENGINE_LOCK:
        FrontHandler.engine.close()


if __name__ == "__main__":
    main()
