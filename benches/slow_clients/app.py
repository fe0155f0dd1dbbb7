"""A stand-in application server with a fixed pool of 200 workers.

Thread per connection, as many application servers are: a connection holds
a worker from accept to close (keep-alive included); the 201st waits in the
listen backlog. GET /big answers 32 KiB, any other GET a short page; POST
reads its body (Content-Length) and answers its length. Idle keep-alive
connections are closed after 5 s, as Node.js does.

Usage: python3 app.py PORT [WORKERS]
"""
import http.server
import socketserver
import sys
import threading

BIG = b"b" * (32 * 1024)
PAGE = b"<!doctype html><title>shop</title><p>Served by the application.</p>\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5
    # The head and the body are two writes: without this, Nagle and the
    # peer's delayed ACK add 40 ms to every answer.
    disable_nagle_algorithm = True

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(BIG if self.path.startswith("/big") else PAGE)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.answer(b"got %d\n" % length)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 4096
    allow_reuse_address = True

    def __init__(self, addr, workers):
        super().__init__(addr, Handler)
        self.slots = threading.BoundedSemaphore(workers)

    def handle_error(self, request, client_address):
        pass  # clients that leave mid-answer are what the attacks do

    def process_request(self, request, client_address):
        self.slots.acquire()
        threading.Thread(target=self.run, args=(request, client_address), daemon=True).start()

    def run(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.slots.release()


if __name__ == "__main__":
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    Server(("127.0.0.1", port), workers).serve_forever()
