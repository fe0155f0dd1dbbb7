"""Opens N keep-alive connections, sends one request on each, reads the
response and keeps them all open (idle) until killed. Prints "open N" when
every connection has had its answer."""
import socket
import sys
import time

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
request = (
    b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n"
    b"Cookie: cutover_id=user-42\r\n\r\n"
)
conns = []
for _ in range(count):
    s = socket.create_connection((host, port))
    s.sendall(request)
    conns.append(s)
answered = 0
deadline = time.monotonic() + 30
for s in conns:
    s.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        if s.recv(65536).startswith(b"HTTP/1.1 200"):
            answered += 1
    except OSError:
        pass
print(f"open {len(conns)} answered {answered}", flush=True)
time.sleep(3600)
