"""Orbax checkpoints: train state, data-iterator state, config and vocabulary.

Each step directory holds three items: `state` (parameters, optimizer state, step, RNG;
sharded arrays written by every host), `data` (the training stream's position: the same
on every host, so a run resumes on any number of hosts) and `meta` (the config and the
SentencePiece model, so a checkpoint directory is self-contained). Orbax writes into a
temporary directory and renames it when complete, so a checkpoint half-written by a kill
is never listed, never loaded.

Nothing is loaded unverified: `meta` carries a checksum of every array's values, taken
in memory before the save (`checksum.py`), of the data position, and of itself. After a
restore the values are checksummed again. What a failure proves, and so whether a step
is moved aside to DIR/quarantine or the command stops with every file in place, is
decided in `integrity.py`, against each committed step's manifest (`manifest.py`), which
the run that saved the step writes beside it. A run that saves holds the directory's
lease (`lease.py`): readers beside it never move its steps. Restoring takes the target
shardings, so a checkpoint restores onto any mesh; a state saved with another optimizer
structure (clipping turned on or off) resumes with its parameters and Adam moments. `average` writes the mean of
the last N checkpoints' parameters as a checkpoint of its own, under WORKDIR/averaged.
"""
from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from transformer_jax import config as config_lib
from transformer_jax import (checksum, distributed, files, integrity, lease, manifest, optim,
                             sharding)
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.errors import UserError
from transformer_jax.integrity import CorruptCheckpoint, RestoreFailed  # what callers catch
from transformer_jax.steps import build

CHECKPOINT_DIR = 'checkpoints'
QUARANTINE_DIR = 'quarantine'  # beside CHECKPOINT_DIR: steps whose damage was proven
AVERAGED_DIR = 'averaged'  # `average` writes its checkpoint under WORKDIR/averaged
# The model keys a resumed state must share with the checkpoint: its arrays' shapes, their
# storage dtype (Orbax would cast on restore, and the checksums then differ), and what
# else makes them the function they were trained as.
MODEL_SHAPE_KEYS = ('vocab_size', 'd_model', 'num_heads', 'd_ff', 'num_encoder_layers',
                    'num_decoder_layers', 'share_embeddings', 'tie_output_embedding',
                    'pre_norm', 'param_dtype', 'activation', 'layer_norm_epsilon',
                    'attention_bias', 'logits_bias', 'scale_embedding')
# The data keys that decide which records the training split holds (and the top-level
# `seed`, their order and sampling): with any of them changed, a restored iterator
# position points into another sequence of batches.
DATA_RECORD_KEYS = ('name', 'source_lang', 'target_lang', 'max_len', 'truncate', 'packing',
                    'subword_samples', 'subword_alpha', 'lowercase')


def vocab_fingerprint(vocab_path: str) -> tuple[str, str]:
  """(sha256, base64) of a vocabulary file: what a checkpoint stores to identify it."""
  data = files.path(vocab_path).read_bytes()
  return hashlib.sha256(data).hexdigest(), base64.b64encode(data).decode('ascii')


class _MetaHandler(ocp.JsonCheckpointHandler):
  """Orbax's JSON item, whose value may be a function called when the item is written,
  in Orbax's background commit: the checksums of a save are computed on the devices while
  Orbax writes its arrays, and still land in the same commit."""

  async def _save_fn(self, x, directory):
    await super()._save_fn(x() if callable(x) else x, directory)


@ocp.args.register_with_handler(_MetaHandler, for_save=True)
@dataclasses.dataclass
class _MetaSave(ocp.args.CheckpointArgs):
  item: Any  # a JSON dict, or a function returning one


@ocp.args.register_with_handler(_MetaHandler, for_restore=True)
@dataclasses.dataclass
class _MetaRestore(ocp.args.CheckpointArgs):
  item: Any = None


def _paths(tree, prefix: str = '') -> set[str]:
  return {prefix + checksum.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _recorded(meta: dict) -> set[str] | None:
  """The paths of every array of the saved state, as its verified meta lists them."""
  return set(meta['checksums']) if integrity.verifiable(meta) else None


def _structure_difference(saved: set[str], wanted: set[str]) -> str:
  """'the checkpoint lacks: a, b; it also holds: c': the arrays only one tree has."""
  def some(paths):
    paths = sorted(paths)
    return ', '.join(paths[:3]) + (f' and {len(paths) - 3} more' if paths[3:] else '')
  return '; '.join(f'{what}: {some(paths)}' for what, paths in
                   (('the checkpoint lacks', wanted - saved), ('it also holds', saved - wanted))
                   if paths)


class Checkpoints:
  """The workdir's checkpoints: save every N steps (async), keep the last N, restore."""

  def __init__(self, workdir: str, config: ConfigDict, *, max_to_keep: int | None = None,
               async_save: bool = True, best_metric: str | None = None,
               writer: bool = False):
    """`best_metric`: keep the `max_to_keep` checkpoints with its highest value instead
    of the latest ones (save() then takes `metrics`). `writer`: this run saves here (it
    holds the lease and writes each committed step's manifest); readers leave it False."""
    self.directory = files.path(workdir) / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep or config.train.keep_checkpoints,
        enable_async_checkpointing=async_save, create=True,
        best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
        best_mode='max',
        # Several processes: training's two managers (latest, best) may save the same step
        # at once, and Orbax names its barriers by step; a prefix per directory keeps apart.
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=hashlib.sha1(str(self.directory).encode()).hexdigest()[:8]))
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'data', 'meta'))
    self.config = config
    self._unverified_noticed = False
    # A writer owns the directory (it may move its steps aside). Its process 0 writes the
    # manifests, off the training thread, and from its first save holds the lease (a run
    # refused before it saves leaves no trace).
    self._writer = writer
    self._recorder = concurrent.futures.ThreadPoolExecutor(1) \
        if writer and distributed.is_writer() else None
    self._lease: lease.Lease | None = None
    self._recording: list[concurrent.futures.Future] = []
    self._in_flight: int | None = None  # saved, maybe not yet committed

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best `best_metric` (the latest without one)."""
    return self._manager.best_step()

  def save(self, step: int, state, data_iterator, vocab_path: str, force=False,
           metrics: dict | None = None) -> None:
    """Start an asynchronous save; training continues while it is written."""
    sha, model = vocab_fingerprint(vocab_path)
    meta = {'config': self.config.to_dict(), 'vocab_sha256': sha, 'vocab_model': model}
    lanes = checksum.start(state)  # of the values in memory now; read before any update
    items = dict(state=ocp.args.StandardSave(state))
    if data_iterator is not None:  # gathered from every process: one record
      data = data_iterator.get_state()
      meta['data_sha256'] = integrity.json_sha256(data)
      items['data'] = ocp.args.JsonSave(data)

    def finished_meta() -> dict:  # in the background, while the arrays are written
      done = {**meta, 'checksums': checksum.digests(lanes),
              'checksum_algorithm': checksum.ALGORITHM}
      return {**done, 'meta_sha256': integrity.json_sha256(done)}
    items['meta'] = _MetaSave(finished_meta)  # one commit with the arrays: no window
    if self._recorder is not None:
      self._lease = self._lease or lease.Lease(self.directory.parent)
      manifest.remove(self.directory, step)  # of an earlier step of this number, moved aside
    saved = self._manager.save(step, force=force, metrics=metrics,
                               args=ocp.args.Composite(**items))
    self._record(self._in_flight)  # Orbax's save waited for the one before to commit
    self._in_flight = step if saved else None

  def _record(self, step: int | None) -> None:
    """Write `step`'s manifest (committed now) in the background, and forget those of
    steps Orbax has deleted since."""
    if self._recorder is None or step is None:
      return

    def job():
      try:
        manifest.write(self.directory, step)
        manifest.prune(self.directory)
      except Exception as e:  # noqa: BLE001 (the step stays verifiable by its checksums)
        distributed.warn(f'could not write the manifest of checkpoint step {step} in '
                         f'{self.directory} ({integrity.first_line(e)}).')
    self._recording.append(self._recorder.submit(job))

  def delete(self, step: int) -> None:
    self._manager.delete(step)
    if self._recorder is not None:
      manifest.remove(self.directory, step)

  def wait(self) -> None:
    """Until every save is committed and has its manifest."""
    self._manager.wait_until_finished()
    self._record(self._in_flight)
    self._in_flight = None
    for job in self._recording:
      job.result()
    self._recording.clear()

  def meta(self, step: int) -> dict:
    """The step's config, vocabulary and checksums, verified against its own sha256
    (CorruptCheckpoint if it is damaged, RestoreFailed if it cannot be read otherwise)."""
    def read():
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=_MetaRestore()))['meta']
      return integrity.checked_meta(step, self.directory, meta)
    return integrity.read(step, self.directory, read)

  def _verifiable(self, meta: dict) -> bool:
    """Whether `meta` carries checksums of this version (one notice if not)."""
    if integrity.verifiable(meta):
      return True
    if not self._unverified_noticed:
      algorithm = meta.get('checksum_algorithm')
      why = (f'carry checksums of another algorithm ({algorithm})' if algorithm else
             'were written before checkpoints carried checksums')
      distributed.warn(f'the checkpoints in {self.directory} {why}: loaded without '
                       'verification.')
      self._unverified_noticed = True
    return False

  def _layout(self, step: int, meta: dict, abstract_state):
    """(the tree to read the step into, a function from it to `abstract_state`'s
    structure). The verified meta lists every saved array: a state saved with another
    optimizer structure is read as saved and carried over; any other difference stops."""
    saved = _recorded(meta)
    if saved is None or saved == _paths(abstract_state):
      return abstract_state, lambda state: state
    saved_config = config_lib.from_checkpoint(meta['config'])
    mesh = jax.tree.leaves(abstract_state)[0].sharding.mesh
    saved_abstract = build(saved_config, mesh).abstract_state
    changed = optim.changed_parts(saved_config, self.config)
    if not changed or saved != _paths(saved_abstract):
      raise RestoreFailed(
          step, self.directory, 'it holds a train state of another structure '
          f'({_structure_difference(saved, _paths(abstract_state))})',
          'Use a new --workdir, or the version and config that wrote it.')

    def carry(state):
      opt_state = optim.carry_over(state.opt_state, saved_config, self.config, state.params)
      opt_state = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), opt_state,
                               abstract_state.opt_state)
      distributed.say(f'the optimizer changed ({", ".join(changed)}): restored the '
                      f'parameters, Adam moments and step of step {step}; its new parts '
                      'start fresh.')
      return state.replace(opt_state=opt_state)
    return saved_abstract, carry

  def restore(self, step: int, abstract_state, data_iterator=None):
    """The state at `step`, placed as `abstract_state`'s shardings say (any mesh);
    `data_iterator`, if given, is moved to where it was when the checkpoint was saved."""
    meta = self.meta(step)
    target, carry = self._layout(step, meta, abstract_state)
    if data_iterator is not None and integrity.verifiable(meta) and 'data_sha256' not in meta:
      # The step's own record says it was saved without a data position (`average`'s,
      # the best checkpoints'): a step of another kind, not one missing a part.
      raise UserError(
          f'The checkpoint at step {step} in {self.directory} holds no data position (an '
          'average or a best checkpoint): training cannot resume from it. Resume the run '
          'it came from (its workdir), or train in a new --workdir; translate, evaluate '
          'and average read it as it is. Nothing was moved.')
    items = {'state': ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items['data'] = ocp.args.JsonRestore()

    def read():
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      if (data_iterator is not None and 'data_sha256' in meta
          and integrity.json_sha256(restored['data']) != meta['data_sha256']):
        raise CorruptCheckpoint(step, self.directory, 'its data position does not match '
                                'its checksum')
      return restored
    restored = integrity.read(step, self.directory, read, _recorded(meta))
    if self._verifiable(meta):  # the same verdict on every process
      integrity.verify(step, self.directory, meta, restored['state'])
      if self._recorder is not None and self._unrecorded(step):
        self._record(step)  # verified by its values: what a killed save did not write
    if data_iterator is not None:
      data_iterator.set_state(restored['data'])
    return carry(restored['state'])

  def _unrecorded(self, step: int) -> bool:
    try:
      return manifest.read(self.directory, step) is None
    except manifest.DamagedManifest:
      return True

  def restore_params(self, step: int, abstract_params):
    """Only the parameters of the state at `step` (placed as `abstract_params` says): the
    optimizer state is not read, so it costs no memory and its damage does not matter."""
    meta = self.meta(step)
    saved = {p for p in _recorded(meta) or () if p.startswith('params/')}
    wanted = _paths(abstract_params, 'params/')
    if saved and saved != wanted:
      raise RestoreFailed(step, self.directory, 'its parameters are of another structure '
                          f'({_structure_difference(saved, wanted)})',
                          'Restore it with the version that wrote it.')
    item = {'params': abstract_params}
    args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    # A reader of its own: a manager binds each item to the handler of its first call,
    # and this one (PyTree, partial) is not the one `save` and `restore` use (Standard).
    reader = ocp.CheckpointManager(self.directory, item_names=('state',),
                                   options=ocp.CheckpointManagerOptions(read_only=True))
    try:
      params = integrity.read(
          step, self.directory,
          lambda: reader.restore(step, args=ocp.args.Composite(state=args))['state']['params'],
          _recorded(meta))
    finally:
      reader.close()
    if self._verifiable(meta):
      integrity.verify(step, self.directory, meta, params, prefix='params/')
    return params

  def quarantine(self, step: int) -> str | None:
    """Move a step whose damage was proven aside, out of Orbax's sight, with its
    manifest; where to (None if it was left in place: another run holds this directory's
    lease, or the storage is read-only; it is then only skipped)."""
    moved = [None]

    def move(first: bool) -> None:
      if not first:  # process 0 moves (the directory is shared)
        return
      writer = None if self._writer else lease.live_writer(self.directory.parent)
      if writer:
        distributed.warn(f'left {self.directory / str(step)} in place: a run is saving '
                         f'into {self.directory} ({writer}) and may be deleting it.')
        return
      try:
        target, marker = self._move_target(step)
        if files.is_bucket(target):  # a copy, then a delete: resumable, by this marker
          files.write_atomically(marker, str(target).encode())
        files.move_tree(self.directory / str(step), target)
        moved[0] = str(target)
        manifest.move(self.directory, step, target / 'manifest.json')
        marker.unlink(missing_ok=True)
      except Exception as e:  # noqa: BLE001 (read-only storage: skip it, leave it)
        distributed.warn(f'could not move {self.directory / str(step)} aside '
                         f'({integrity.first_line(e)}).')
    distributed.once(f'quarantine checkpoint {step}', move, timeout_s=600)
    self._manager.reload()
    return moved[0]

  def _move_target(self, step: int):
    """(where `step` goes, the marker of its move). A move a killed run began in a bucket
    goes on into the target its marker names, as long as nothing copied there differs
    from the step's objects of the same name (else, e.g. a stale marker of an earlier
    step of that number, to a new place)."""
    where = self.directory.parent / QUARANTINE_DIR
    marker = where / f'.moving-{self.directory.name}-{step}'
    try:
      pending = files.path(marker.read_text().strip())
      copied, source = manifest.listing(pending), manifest.listing(self.directory / str(step))
      if all(manifest.same(source.get(name, entry), entry) for name, entry in copied.items()):
        return pending, marker
    except FileNotFoundError:
      pass
    return where / f'{self.directory.name}-{step}-{time.strftime("%Y%m%d-%H%M%S")}', marker

  def quarantined(self) -> list[str]:
    """The names of this directory's steps that were moved aside (in any run)."""
    where = self.directory.parent / QUARANTINE_DIR
    prefix = f'{self.directory.name}-'
    return sorted(p.name for p in where.iterdir() if p.name.startswith(prefix)) \
        if where.is_dir() else []

  def restore_newest(self, restore_step, steps=None):
    """(step, `restore_step(step)`) of the newest step that verifies, quarantining each
    newer one whose damage is proven, with a warning; (None, None) if none verifies.
    Any other failure (RestoreFailed, or a refusal of `restore_step`) stops the search."""
    for step in reversed(steps or self.steps()):
      try:
        return step, restore_step(step)
      except CorruptCheckpoint as e:
        where = self.quarantine(step)
        distributed.warn(f'{e} {f"Moved it to {where}" if where else "Left it in place"}; '
                         'trying the one before.')
    return None, None

  def newest_verified(self, abstract_params) -> int | None:
    """The newest step whose parameters verify (only they are read: this is asked while
    a training state fills the devices' memory)."""
    self.wait()
    return self.restore_newest(lambda step: self.restore_params(step, abstract_params))[0]

  def check_compatible(self, step: int, vocab_path: str) -> None:
    """Refuse a checkpoint from another model shape, vocabulary or training data, naming
    the fix."""
    try:
      meta = self.meta(step)
    except CorruptCheckpoint:
      return  # not this step's to judge: restoring quarantines it and falls back
    where = f'The checkpoint at step {step} in {self.directory}'
    if self.per_process_data_state(step):
      raise UserError(f'{where} holds the data position of an earlier input pipeline '
                      '(one per process), which this version cannot continue. Use a new '
                      '--workdir; translate, evaluate and average still read it.')
    diffs = _differences(meta['config']['model'], self.config.model, MODEL_SHAPE_KEYS)
    if diffs:
      raise UserError(f'{where} is of another model ({diffs}). Use a new --workdir, or a '
                      '--config that matches the checkpoint.')
    if meta['vocab_sha256'] != vocab_fingerprint(vocab_path)[0]:
      raise UserError(f'{where} was trained with another vocabulary than {vocab_path}. '
                      'Restore that vocabulary file or use a new --workdir.')
    diffs = '; '.join(filter(None, (
        _differences(meta['config']['data'], self.config.data, DATA_RECORD_KEYS),
        _differences(meta['config'], self.config, ('seed',)))))  # shuffle and sampling
    if diffs:
      raise UserError(f'{where} was trained on other records ({diffs}): its saved '
                      'data-iterator position would not continue that run. Use a new '
                      "--workdir, or the checkpoint's data settings.")

  def per_process_data_state(self, step: int) -> bool:
    """Whether `step` holds Grain iterator states, one per process (before 2026-12-02)."""
    return any((self.directory / str(step) / 'data').glob('process_*-of-*.json'))

  def close(self) -> None:
    self.wait()
    self._manager.close()
    if self._recorder is not None:
      self._recorder.shutdown()
    if self._lease is not None:
      self._lease.release()


def _differences(saved: dict, ours: ConfigDict, keys) -> str:
  """'key: checkpoint A, config B' for each key that differs. A key that a checkpoint of
  an older version lacks is not compared: it did not exist, so it was at its default."""
  return '; '.join(f'{k}: checkpoint {saved[k]!r}, config {ours[k]!r}'
                   for k in keys if k in saved and saved[k] != ours[k])


def check_writable(workdir: str) -> None:
  try:
    # Named per process: on a pod slice, several hosts probe one bucket at once.
    probe = files.path(workdir) / f'.write-test-{jax.process_index()}-{os.getpid()}'
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # noqa: BLE001 (local disks raise OSError, buckets their own)
    reason = getattr(e, 'strerror', None) or str(e).splitlines()[0]
    raise UserError(f'The workdir {workdir} is not writable ({reason}); choose a '
                    'directory (or bucket) you can write to.') from None



def checkpoint_root(workdir: str, averaged: bool = False) -> str:
  """The directory whose `checkpoints/` a command reads: the workdir, or its average."""
  root = os.path.join(workdir, AVERAGED_DIR) if averaged else workdir
  if not (files.path(root) / CHECKPOINT_DIR).is_dir():
    what = 'averaged checkpoint (run transformer_jax.average first)' if averaged else \
        'checkpoints (train first, or point --workdir at a training run)'
    raise UserError(f'{workdir} holds no {what}.')
  return root


def average(workdir: str, last: int, until_step: int | None = None) -> tuple[int, list[int]]:
  """Average the parameters of the last `last` checkpoints (at or before `until_step`, if
  given) into WORKDIR/averaged, replacing an earlier average; returns (its step, the
  steps averaged).

  The paper averaged the last 5 checkpoints (base) or 20 (big). Parameters are restored
  sharded over every device (FSDP: no device holds a whole model) and summed in place;
  the average keeps the latest checkpoint's config, vocabulary and optimizer state."""
  source = Checkpoints(checkpoint_root(workdir), config_lib.defaults(), async_save=False)
  steps = [s for s in source.steps() if until_step is None or s <= until_step]
  if len(steps) < last:
    upto = '' if until_step is None else f' at or before step {until_step}'
    raise UserError(f'--last={last} but {source.directory} holds {len(steps)} checkpoints'
                    f'{upto} ({", ".join(map(str, steps)) or "none"}); raise '
                    'train.keep_checkpoints before training to keep more.')
  steps = steps[-last:]
  meta = source.meta(steps[-1])
  config = config_lib.from_checkpoint(meta['config'])
  config.mesh.update(dict(data=1, fsdp=-1, tensor=1))  # shard parameters over every device
  setup = build(config, sharding.make_mesh(config.mesh))
  total = None
  for step in steps[:-1]:
    params = source.restore_params(step, setup.abstract_state.params)
    total = params if total is None else jax.tree.map(jnp.add, total, params)
  state = source.restore(steps[-1], setup.abstract_state)
  source.close()
  total = state.params if total is None else jax.tree.map(jnp.add, total, state.params)
  averaged = state.replace(params=jax.tree.map(lambda x: (x / last).astype(x.dtype), total))
  _replace_average(os.path.join(workdir, AVERAGED_DIR), config, steps[-1], averaged,
                   _vocab_file(workdir, meta))
  return steps[-1], steps


def _replace_average(root: str, config, step: int, averaged, vocab_path: str) -> None:
  """The average as WORKDIR/averaged's one checkpoint: written beside the earlier one,
  which goes only once the new one is complete (an earlier one of the same step waits
  in averaged/previous-STEP meanwhile, and comes back if the write fails)."""
  target = Checkpoints(root, config, max_to_keep=None, async_save=False, writer=True)
  earlier = target.steps()
  aside = target.directory.parent / f'previous-{step}'

  def set_aside(first: bool) -> None:
    if first:  # process 0; the directory is shared
      files.move_tree(target.directory / str(step), aside)

  def put_back(first: bool) -> None:
    if first:  # Orbax commits by a rename: a failed save left no step directory
      files.move_tree(aside, target.directory / str(step))

  def remove_aside(first: bool) -> None:
    if first:
      aside.rmtree()
  if step in earlier:
    distributed.once('set the earlier average aside', set_aside, timeout_s=600)
    target._manager.reload()  # noqa: SLF001 (our manager, after a move it did not make)
  try:
    target.save(step, averaged, None, vocab_path, force=True)
    target.wait()
  except BaseException:
    if step in earlier:
      distributed.once('put the earlier average back', put_back, timeout_s=600)
    raise
  for old in target.steps():
    if old != step:
      target.delete(old)
  target.close()
  if step in earlier:
    distributed.once('remove the earlier average', remove_aside, timeout_s=600)


def _vocab_file(workdir: str, meta: dict) -> str:
  """The vocabulary to store with the average: the workdir's or, when absent, the copy
  inside the checkpoint (translate checks the workdir's against it)."""
  path = os.path.join(workdir, tokenizer_lib.VOCAB_FILE)
  if files.path(path).exists():
    return path
  path = os.path.join(workdir, AVERAGED_DIR, tokenizer_lib.VOCAB_FILE)

  def write(first: bool) -> None:
    if first:  # process 0; a workdir is shared by every process
      files.write_atomically(path, base64.b64decode(meta['vocab_model']))
  distributed.once('write the vocabulary of the average', write, timeout_s=600)
  return path
