"""The machine's ceiling for HTTP downloads, a baseline of `deno task bench concurrent`.

    python3 bench/sendfile_server.py DIR NAME...

Serves the named files of DIR, one after the other, as the body of every GET (no tar
headers), and sends them with sendfile(2): the kernel copies from the page cache to the
socket, so the server spends almost no CPU of its own. One thread per connection. Prints
the port it listens on (127.0.0.1), then serves until killed.

What it shows: how many bytes a second one, and ten, HTTP downloads over loopback to curl
can reach on this machine when the server costs nothing, so that cartd's figures can be
read against what the cores allow.
"""
import os
import socket
import sys
import threading

root, names = sys.argv[1], sys.argv[2:]
paths = [os.path.join(root, name) for name in names]
total = sum(os.path.getsize(path) for path in paths)
header = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % total
)


def serve(conn: socket.socket) -> None:
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            part = conn.recv(65536)
            if not part:
                return
            request += part
        conn.sendall(header)
        for path in paths:
            with open(path, "rb") as file:
                conn.sendfile(file)


server = socket.create_server(("127.0.0.1", 0), backlog=128)
print(server.getsockname()[1], flush=True)
while True:
    client, _ = server.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
