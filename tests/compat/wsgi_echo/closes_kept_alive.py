"""An upstream that answers the first request on each connection (keep-alive, 200, a
JSON body) and closes the connection when a second request arrives on it, without
answering: the race of a kept-alive connection the server times out just as the client
reuses it. For tests/proxy.rs: datagate's own forward path (bodies over pingora's retry
buffer) must try such a request again on a fresh connection.

    python3 closes_kept_alive.py PORT LOGFILE [body|head|always]

`body` (the default) reads the whole second request before closing (the client's read
of the answer fails); `head` closes as soon as the second request's head is in, its body
unread (the client's writes fail, or its read is reset); `always` drops every request,
the first on a connection too.

Every answered request appends one line to LOGFILE: `answered <body length>`, followed
by ` <body>` when the body is under 4 KiB; every request dropped unanswered appends
`dropped`. PORT 0 binds an ephemeral port; the bound
address is printed as the first line of stdout ("listening on 127.0.0.1:PORT").
"""

import socket
import sys
import threading


def read_request(connection, buffered, head_only=False):
    """One request (head and Content-Length body) from the connection, or None at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if head_only:
        return rest, b""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return rest[:length], rest[length:]


def serve(connection, log, lock, drop_at):
    with connection:
        body, buffered = read_request(connection, b"")
        if body is None:
            return
        if drop_at == "always":
            with lock, open(log, "a") as out:
                out.write("dropped\n")
            return
        # Logged before answering: the test reads the log as soon as it has the answer.
        with lock, open(log, "a") as out:
            shown = " " + body.decode(errors="replace") if len(body) < 4096 else ""
            out.write(f"answered {len(body)}{shown}\n")
        answer = b'{"results": {}}'
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer
        )
        body, _ = read_request(connection, buffered, head_only=drop_at == "head")
        if body is not None:
            with lock, open(log, "a") as out:
                out.write("dropped\n")


def main():
    port, log = int(sys.argv[1]), sys.argv[2]
    drop_at = sys.argv[3] if len(sys.argv) > 3 else "body"
    lock = threading.Lock()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if drop_at == "head":
        # A small receive window (inherited by accepted sockets, no autotuning): a body
        # larger than the client's send buffer cannot be written before this side reads
        # it, so closing with it unread always fails the client's writes.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, log, lock, drop_at), daemon=True).start()


if __name__ == "__main__":
    main()
