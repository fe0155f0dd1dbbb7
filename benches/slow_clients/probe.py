"""A normal user during an attack: GET / on fresh connections, THREADS at a
time, for SECONDS; each request must be answered (200) within 5 s.
Prints: requests answered share_percent p50_ms p99_ms.

Usage: python3 probe.py PORT SECONDS [THREADS]
"""
import http.client
import sys
import threading
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
results = []
lock = threading.Lock()
end = time.monotonic() + seconds


def user():
    while time.monotonic() < end:
        start = time.monotonic()
        ok = False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/", headers={"Cookie": "cutover_id=probe"})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
            conn.close()
        except Exception:
            pass
        elapsed = time.monotonic() - start
        with lock:
            results.append((ok, elapsed))
        time.sleep(0.05)


workers = [threading.Thread(target=user) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
answered = sorted(e for ok, e in results if ok)
share = 100.0 * len(answered) / max(1, len(results))
pct = lambda q: 1000 * answered[min(len(answered) - 1, int(q * len(answered)))] if answered else float("nan")
print(f"{len(results)} {len(answered)} {share:.1f} {pct(0.5):.1f} {pct(0.99):.1f}")
