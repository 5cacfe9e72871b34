"""Inside a sandbox: relay 127.0.0.1:PORT of the sandbox's own network namespace to the
egress proxy's Unix socket, then run the command.

    python3 netbridge.py SOCKET PORT -- COMMAND [ARG ...]

Standard library only (it runs with the sandbox's Python). It binds the port first, so the
command never races the relay, forks a relay process (no stdio; it dies with the sandbox's
PID namespace or container), and execs the command in its own place. The sandbox has no
other interface than loopback: this relay is its only way out, and the proxy on the other
end of the socket decides every destination (`sandbox/egress.py`).
"""

import os
import socket
import sys
import threading


def _pipe(source, target):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _serve(client, path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _relay(listener, path):
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, path), daemon=True).start()


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: netbridge.py SOCKET PORT -- COMMAND [ARG ...]\n")
        return 2
    path, port, command = argv[0], int(argv[1]), argv[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.setsid()
        try:
            _relay(listener, path)
        finally:
            os._exit(0)
    listener.close()
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
