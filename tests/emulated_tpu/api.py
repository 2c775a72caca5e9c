"""The Cloud TPU API (tpu.googleapis.com, v2) as the real `gcloud` CLI calls it, and the
one Compute API call its `tpu-vm ssh` makes, served on loopback and backed by the
emulated fleet (fleet.py). What the CLI sends is in docs/gcloud_tpu_api.md.

  nodes: create (a long-running operation), get, delete, patch (updateMask=metadata:
         the CLI's ssh key push, which this server installs on the workers as a TPU VM's
         guest agent does), getGuestAttributes (each worker's ssh host key)
  queuedResources: create, get, delete
  operations: get
  compute projects.get (no project-wide keys; OS Login off)

Faults (fleet.set_faults): `create_failures` end a create's operation in the API's
RESOURCE_EXHAUSTED; `describe_failures` answer a node's or queued resource's get with
HTTP 503 (the CLI retries 5 times, so 6 make one command fail), `quota_failures` with
HTTP 429 (which the CLI does not retry); `ssh_key_delay_s`
installs a pushed key that much later (gcloud's ssh fails, then retries). Every request
is logged to $TPU_EMULATOR_DIR/api_requests.jsonl (method, path, User-Agent).

  python api.py PORT          ($TPU_EMULATOR_DIR set)
"""
from __future__ import annotations

import http.server
import itertools
import json
import pathlib
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fleet  # noqa: E402 (run as a script)

NODE = re.compile(r'/v2/projects/([^/]+)/locations/([^/]+)/nodes(?:/([^/:]+))?(:\w+)?')
QUEUED = re.compile(r'/v2/projects/([^/]+)/locations/([^/]+)/queuedResources(?:/([^/]+))?')
OPERATION = re.compile(r'/v2/(projects/[^/]+/locations/[^/]+/operations/[^/]+)')
PROJECT = re.compile(r'/compute/v1/projects/([^/]+)')
NODE_TYPE = 'type.googleapis.com/google.cloud.tpu.v2.Node'
_ids = itertools.count(1)
_lock = threading.Lock()
_operations: dict[str, dict] = {}


class Failure(Exception):
  """An API error: HTTP status, gRPC status name and message, as Google APIs answer."""

  def __init__(self, code: int, status: str, message: str):
    super().__init__(message)
    self.code, self.status, self.message = code, status, message


def not_found(kind: str, name: str) -> Failure:
  return Failure(404, 'NOT_FOUND', f'{kind} "{name}" not found')


def node_json(n: dict, parent: str) -> dict:
  """A node as nodes.get answers: apiVersion V2 and an `id` (the CLI's ssh needs both),
  one network endpoint per worker (its sshd's loopback address), no external IPs."""
  return {'name': f'{parent}/nodes/{n["name"]}', 'id': str(n['id']), 'apiVersion': 'V2',
          'state': n['state'], 'health': 'HEALTHY', 'acceleratorType': n['type'],
          'runtimeVersion': n.get('runtime', ''), 'metadata': n.get('metadata', {}),
          'schedulingConfig': {'spot': n.get('spot', False)},
          'networkConfig': {'network': 'default', 'enableExternalIps': False},
          'networkEndpoints': [{'ipAddress': w['address'], 'port': 8470}
                               for w in n['workers']]}


def queued_json(n: dict, parent: str, name: str) -> dict:
  """A queued resource holding node `n`: ACTIVE while it is READY, SUSPENDED once it is
  preempted (until deleted), PROVISIONING while it boots."""
  state = {'READY': 'ACTIVE', 'CREATING': 'PROVISIONING'}.get(n['state'], 'SUSPENDED')
  return {'name': f'{parent}/queuedResources/{name}', 'state': {'state': state},
          'tpu': {'nodeSpec': [{'parent': parent, 'nodeId': n['name'],
                                'node': {'acceleratorType': n['type']}}]}}


def operation(parent: str, work) -> dict:
  """A long-running operation running `work()` (which returns the response, or raises
  Failure) in the background, as the CLI polls it."""
  name = f'{parent}/operations/operation-{int(time.time() * 1000)}-{next(_ids)}'
  op = {'name': name, 'done': False, 'metadata': {'apiVersion': 'v2'}}
  with _lock:
    _operations[name] = op

  def run():
    try:
      result = {'response': work()}
    except Failure as e:
      result = {'error': {'code': {'RESOURCE_EXHAUSTED': 8, 'NOT_FOUND': 5}.get(e.status, 13),
                          'message': e.message}}
    with _lock:
      op.update(result, done=True)

  threading.Thread(target=run, daemon=True).start()
  return dict(op)


def create(parent: str, zone: str, name: str, accelerator: str, **node) -> dict:
  """A node's create: ALREADY_EXISTS at once, capacity errors in the operation."""
  if fleet.node(name) is not None:
    raise Failure(409, 'ALREADY_EXISTS', f'Resource \'{parent}/nodes/{name}\' already exists')

  def work():
    if fleet.take_fault('create_failures'):
      raise Failure(429, 'RESOURCE_EXHAUSTED',
                    f'There is no more capacity in the zone "{zone}"; you can try in another '
                    'zone where Cloud TPU Nodes are offered (see https://cloud.google.com/'
                    'tpu/docs/regions) [EID: 0x1a2b3c4d5e6f]')
    error = fleet.create(name, accelerator, **node)
    if error:
      raise Failure(409, 'ALREADY_EXISTS', error)
    return {'@type': NODE_TYPE, **node_json(fleet.node(name), parent)}
  return operation(parent, work)


def delete(parent: str, name: str, kind: str) -> dict:
  n = fleet.node(name) if kind == 'node' else fleet.node_of_queued(name)
  if n is None:
    raise not_found(kind, f'{parent}/{kind}s/{name}')

  def work():
    fleet.delete(n['name'])
    return {}
  return operation(parent, work)


def get(name: str, kind: str, parent: str) -> dict:
  """The node `name`, or the node a queued resource `name` holds."""
  if fleet.take_fault('describe_failures'):
    raise Failure(503, 'UNAVAILABLE', 'The service is currently unavailable.')
  if fleet.take_fault('quota_failures'):
    raise Failure(429, 'RESOURCE_EXHAUSTED',
                  "Quota exceeded for quota metric 'Read requests' and limit 'Read requests "
                  "per minute' of service 'tpu.googleapis.com'.")
  n = fleet.node(name) if kind == 'node' else fleet.node_of_queued(name)
  if n is None:
    raise not_found(kind, f'{parent}/{kind}s/{name}')
  return n


def patch(parent: str, name: str, mask: str, body: dict) -> dict:
  """Only the node's metadata changes (the CLI's ssh key push); its `ssh-keys` reach the
  workers as a guest agent puts them there, after `ssh_key_delay_s` if that fault is set."""
  n = get(name, 'node', parent)
  if mask != 'metadata':
    raise Failure(400, 'INVALID_ARGUMENT', f'updateMask {mask!r} is not supported here')
  fleet.set_metadata(name, body.get('metadata', {}))
  delay = fleet.settings().get('ssh_key_delay_s', 0)
  threading.Timer(delay, fleet.install_keys, [name]).start()
  return operation(parent, lambda: {'@type': NODE_TYPE, **node_json(fleet.node(name), parent)})


def guest_attributes(n: dict, body: dict) -> dict:
  """Each requested worker's ssh host key ("" asks for every worker)."""
  ids = body.get('workerIds') or ['']
  workers = range(len(n['workers'])) if ids == [''] else [int(i) for i in ids]
  return {'guestAttributes': [
      {'queryPath': body.get('queryPath', ''), 'workerId': str(i),
       'queryValue': {'items': [{'namespace': 'hostkeys', 'key': 'ssh-ed25519',
                                 'value': n['workers'][i]['host_key']}]}}
      for i in workers]}


def answer(method: str, path: str, query: dict, body: dict) -> dict:
  """The JSON answer to one request, or Failure."""
  if m := OPERATION.fullmatch(path):
    with _lock:
      if m[1] not in _operations:
        raise not_found('operation', m[1])
      return dict(_operations[m[1]])
  if m := PROJECT.fullmatch(path):
    return {'kind': 'compute#project', 'name': m[1], 'commonInstanceMetadata': {'items': []}}
  if m := NODE.fullmatch(path):
    project, zone, name, verb = m.groups()
    parent = f'projects/{project}/locations/{zone}'
    if method == 'POST' and name is None:
      return create(parent, zone, query['nodeId'], body['acceleratorType'],
                    runtime=body.get('runtimeVersion', ''),
                    spot=bool(body.get('schedulingConfig', {}).get('spot')))
    if method == 'GET' and name:
      return node_json(get(name, 'node', parent), parent)
    if method == 'DELETE' and name:
      return delete(parent, name, 'node')
    if method == 'PATCH' and name:
      return patch(parent, name, query.get('updateMask', ''), body)
    if method == 'POST' and verb == ':getGuestAttributes':
      return guest_attributes(get(name, 'node', parent), body)
  if m := QUEUED.fullmatch(path):
    project, zone, name = m.groups()
    parent = f'projects/{project}/locations/{zone}'
    if method == 'POST' and name is None:
      [spec] = body['tpu']['nodeSpec']
      return create(parent, zone, spec['nodeId'], spec['node']['acceleratorType'],
                    runtime=spec['node'].get('runtimeVersion', ''), spot='spot' in body,
                    queued=query['queuedResourceId'])
    if method == 'GET' and name:
      return queued_json(get(name, 'queuedResource', parent), parent, name)
    if method == 'DELETE' and name:
      return delete(parent, name, 'queuedResource')
  raise Failure(501, 'UNIMPLEMENTED', f'{method} {path} is not emulated')


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'

  def handle_any(self):
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
    size = int(self.headers.get('Content-Length') or 0)
    body = json.loads(self.rfile.read(size) or b'{}') if size else {}
    fleet.log_request({'method': self.command, 'path': url.path,
                       'user_agent': self.headers.get('User-Agent', '')})
    try:
      status, reply = 200, answer(self.command, url.path, query, body)
    except Failure as e:
      status, reply = e.code, {'error': {'code': e.code, 'message': e.message,
                                         'status': e.status}}
    data = json.dumps(reply).encode()
    self.send_response(status)
    self.send_header('Content-Type', 'application/json; charset=UTF-8')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  do_GET = do_POST = do_PATCH = do_DELETE = handle_any  # noqa: N815 (http.server's names)

  def log_message(self, *args):
    pass


if __name__ == '__main__':
  http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Handler).serve_forever()
