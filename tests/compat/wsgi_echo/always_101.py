"""An upstream that answers every request with `101 Switching Protocols`, whatever it
asked for, and then records every byte that arrives on the connection (the "tunnel").
For tests/headers.rs: datagate must not turn such an answer into a tunnel.

    python3 always_101.py PORT LOGFILE

PORT 0 binds an ephemeral port; the bound address is printed as the first line of stdout
("listening on 127.0.0.1:PORT") so the test never races another process for a port.
"""

import socket
import sys
import threading


def serve(connection, log, lock):
    with connection:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        with lock, open(log, "ab") as out:
            out.write(data)
        connection.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return
            with lock, open(log, "ab") as out:
                out.write(chunk)


def main():
    port, log = int(sys.argv[1]), sys.argv[2]
    lock = threading.Lock()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, log, lock), daemon=True).start()


if __name__ == "__main__":
    main()
