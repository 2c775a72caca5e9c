"""gcp-storage-emulator (a GCS server in Python, for tests) with the one response header
it leaves out and tensorstore, Orbax's GCS client, needs: an object's generation on
download. Run as `python tests/gcs_emulator.py start --port N --in-memory ...`."""
import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    response['x-goog-generation'] = obj['generation']
  except NotFound:
    pass  # the original handler answers 404
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation  # before the server builds its routes

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == '__main__':
  sys.exit(main())
