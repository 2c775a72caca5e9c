"""Process 1 of one emulated TPU VM worker: its metadata server, and the init that reaps.

Started by `fleet.py` inside the worker's own PID, UTS and mount namespaces, so every
process of the worker (ssh commands, `nohup` jobs, training) descends from it or is
re-parented to it, as to systemd on a VM; killing it ends the whole worker, as a VM
shutdown does. It answers what a TPU VM's metadata server answers JAX's cluster
detection (jax._src.clusters.cloud_tpu_cluster.GceTpuCluster):
`instance/attributes/{agent-worker-number, worker-network-endpoints, accelerator-type,
tpu-env}`. Unlike GCE it does not insist on the `Metadata-Flavor: Google` header
(libtpu's own probes, which fail here anyway, would retry 30 times).

  python vm.py PORT ATTRIBUTES_JSON
"""
import http.server
import json
import os
import sys
import threading
import time

PREFIX = '/computeMetadata/v1/instance/attributes/'


def serve(port: int, attributes: dict) -> None:
  class Metadata(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
      key = self.path[len(PREFIX):] if self.path.startswith(PREFIX) else None
      if key not in attributes:
        self.send_response(404)
      else:
        body = str(attributes[key]).encode()
        self.send_response(200)
        self.send_header('Metadata-Flavor', 'Google')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return
      self.end_headers()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', port), Metadata)
  threading.Thread(target=server.serve_forever, daemon=True).start()


def reap_forever() -> None:
  """As init: collect every exited child, including orphans re-parented to us."""
  while True:
    try:
      os.waitpid(-1, 0)
    except ChildProcessError:
      time.sleep(0.2)


if __name__ == '__main__':
  with open(sys.argv[2]) as f:
    serve(int(sys.argv[1]), json.load(f))
  reap_forever()
