"""Stall probe for the reload section of compare.sh.

  probe.py HOST PORT ADMIN_SOCKET CONFIG RELOADS
      A second thread sends GETs back to back on one keep-alive connection,
      so a request is always in flight, and times each. Meanwhile the main
      thread reloads the config RELOADS times, 2 s apart: it changes the first route's
      weight in CONFIG (so each reload builds a new snapshot) and posts
      /v1/reload to the admin socket, without starting a process that would
      compete with the probe for its CPU. Prints the reload round trips, then
      the latency of the probe's requests that overlapped a reload against
      those that did not: if a reload held the worker up, the first group
      shows it.
"""
import re
import socket
import sys
import threading
import time

REQUEST = (
    b"GET /products/probe HTTP/1.1\r\nHost: shop.example.com\r\n"
    b"Cookie: cutover_id=user-probe\r\n\r\n"
)


def read_response(conn, buf):
    """Reads one response with a Content-Length body; returns what follows."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected answer: {head[:40]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    return rest[length:]


def probe(host, port, stop, samples):
    conn = socket.create_connection((host, port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while not stop.is_set():
        start = time.perf_counter_ns()
        conn.sendall(REQUEST)
        buf = read_response(conn, buf)
        samples.append((start, time.perf_counter_ns()))


def reload(admin, config, index):
    """Changes the first route's weight, posts /v1/reload; returns (start, end)."""
    with open(config) as f:
        text = f.read()
    text = re.sub(r"(?m)^weight = [0-9]+", f"weight = {6 + index % 90}", text, count=1)
    with open(config, "w") as f:
        f.write(text)
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(admin)
    start = time.perf_counter_ns()
    conn.sendall(b"POST /v1/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    end = time.perf_counter_ns()
    conn.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"reload refused: {answer[:200]!r}")
    return start, end


def main(host, port, admin, config, reloads):
    stop, samples, windows = threading.Event(), [], []
    thread = threading.Thread(target=probe, args=(host, port, stop, samples))
    thread.start()
    try:
        time.sleep(1)
        for i in range(reloads):
            windows.append(reload(admin, config, i))
            time.sleep(2)
    finally:
        stop.set()
        thread.join()
    print("reload round trip (POST /v1/reload: read, parse, validate, swap), ms:",
          " ".join(f"{(e - s) / 1e6:.1f}" for s, e in windows))
    report(samples, windows)


def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def report(samples, windows):
    during, outside = [], []
    for s, e in samples:
        overlaps = any(s < w1 and e > w0 for w0, w1 in windows)
        (during if overlaps else outside).append((e - s) / 1e6)
    print("| probe requests | count | p50 ms | p99 ms | max ms | over 5 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in (("during a reload", during), ("no reload running", outside)):
        values.sort()
        over = sum(1 for v in values if v > 5.0)
        print(
            f"| {name} | {len(values)} | {quantile(values, 0.5):.3f} | {quantile(values, 0.99):.3f} "
            f"| {(values[-1] if values else float('nan')):.3f} | {over} |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
