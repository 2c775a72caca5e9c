"""gcp-storage-emulator (a GCS server in Python, for tests and the rehearsal benches),
with what it lacks for the clients that use it here:
  - tensorstore (Orbax's GCS client) needs an object's generation on download;
  - the real `gcloud storage` quotes its multipart boundary in single quotes
    (`boundary='===...=='`), which the emulator's parser does not take, and sends
    uploads of 8 MiB and more to `/resumable/upload/storage/v1/...`, which it lacks.

`start(bucket)` runs it in a new process on a free port and returns the process and the
variables that point gcsfs, tensorstore and google-cloud-storage at it; `gcloud_env`
adds those that point the real gcloud CLI's storage commands at it. As a script:
`python tests/gcs_emulator.py start --port N --in-memory ...`.
"""
import os
import re
import socket
import subprocess
import sys
import time


def start(bucket: str) -> tuple[subprocess.Popen, dict]:
  """The emulator serving `bucket` on a free port, once it accepts connections."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  server = subprocess.Popen([sys.executable, os.path.abspath(__file__), 'start', '--port',
                             str(port), '--in-memory', '--default-bucket', bucket],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  for _ in range(300):
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      break
    except OSError:
      time.sleep(0.1)
  url = f'http://127.0.0.1:{port}'
  # GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT: gcsfs would probe each bucket's layout over gRPC,
  # which the emulator does not serve (a warning per call, or a minute's wait).
  return server, dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                      GOOGLE_CLOUD_PROJECT='test', GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false')


def gcloud_env(gcs: dict, directory: str | os.PathLike) -> dict:
  """The variables that point the real `gcloud storage` at the emulator `gcs` (start's
  variables): its endpoint, an access-token file and a project (written under
  `directory`), no metadata-server probe, no prompts."""
  token = os.path.join(directory, 'gcloud-token')
  with open(token, 'w') as f:
    f.write('emulated-access-token\n')
  return {'CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE': gcs['STORAGE_EMULATOR_HOST'] + '/',
          'CLOUDSDK_AUTH_ACCESS_TOKEN_FILE': token, 'CLOUDSDK_CORE_PROJECT': 'emulated-project',
          'CLOUDSDK_CORE_CHECK_GCE_METADATA': 'false', 'CLOUDSDK_CORE_DISABLE_PROMPTS': '1'}


def _serve() -> int:
  from gcp_storage_emulator import server
  from gcp_storage_emulator.__main__ import main
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  read_data = server._read_data

  def read_data_with_any_boundary_quotes(request_handler, query):
    kind = request_handler.headers.get('Content-Type') or ''
    unquoted = re.sub(r"boundary='([^']*)'", r'boundary="\1"', kind)
    if unquoted != kind:
      del request_handler.headers['Content-Type']
      request_handler.headers['Content-Type'] = unquoted
    return read_data(request_handler, query)

  server._read_data = read_data_with_any_boundary_quotes
  resumable = (r'^/resumable/upload/storage/v1/b/(?P<bucket_name>[-.\w]+)/o$',
               {'POST': objects.insert, 'PUT': objects.upload_partial})
  server.HANDLERS = (resumable, *server.HANDLERS)

  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = obj['generation']
    except NotFound:
      pass  # the original handler answers 404
    return download(request, response, storage, *args, **kwargs)

  objects.download = download_with_generation  # before the server builds its routes
  return main()


if __name__ == '__main__':
  sys.exit(_serve())
