#!/usr/bin/env python3
"""A TLS-terminating TCP proxy for the TLS test (tests/tests/tls.rs): serves TLS on a free
loopback port with the given certificate and forwards the plaintext to an upstream port
(DynamoDB Local), so the functions' HTTPS client can be checked end to end without the
internet. Prints the port it listens on, then serves until killed.

usage: tls-proxy.py CERT_PEM KEY_PEM UPSTREAM_PORT
"""

import socket
import ssl
import sys
import threading


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(ctx: ssl.SSLContext, client: socket.socket, upstream_port: int) -> None:
    try:
        tls = ctx.wrap_socket(client, server_side=True)
    except (ssl.SSLError, OSError):
        client.close()  # a client that does not trust the certificate ends here
        return
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    threading.Thread(target=pipe, args=(tls, upstream), daemon=True).start()
    pipe(upstream, tls)


def main() -> None:
    cert, key, upstream_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=handle, args=(ctx, client, upstream_port), daemon=True).start()


if __name__ == "__main__":
    main()
