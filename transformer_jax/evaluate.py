"""`python -m transformer_jax.evaluate --workdir=DIR`: BLEU and chrF with sacreBLEU.

Translates a split of the checkpoint's dataset (default: test) or `--src`/`--ref` files,
and reports sacreBLEU's BLEU (cased, detokenized, 13a by default: the comparable number)
and chrF with their signatures, as a console line and a JSON file. `--tokenize` and
`--lowercase` give the tokenized, lowercased variants some papers report. On several
processes each translates its devices' rows of every batch; process 0 reports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags

from transformer_jax import cli, distributed, files, inference, inference_flags, scoring
from transformer_jax.data import datasets, pipeline
from transformer_jax.errors import UserError


def sources_and_references(restored) -> tuple[str, list[str], list[str]]:
  """(what is scored, its source lines, their references): --src/--ref or a split."""
  if _SRC.value:
    sources, references = datasets.read_lines(_SRC.value), datasets.read_lines(_REF.value)
    if len(sources) != len(references):
      raise UserError(f'{_SRC.value} has {len(sources)} lines but {_REF.value} has '
                      f'{len(references)}.')
    return _SRC.value, sources, references
  if _DATA_DIR.value:
    restored.config.data.data_dir = _DATA_DIR.value
  if _TFDS_DIR.value:
    restored.config.data.tfds_dir = _TFDS_DIR.value
  pipeline.prepare(restored.config, None)  # several processes: built once, by process 0
  sources, references = pipeline.split_pairs(restored.config, _SPLIT.value)
  return f'{restored.config.data.name}/{_SPLIT.value}', sources, references


def main(argv):
  del argv
  settings = inference_flags.settings()
  if bool(_SRC.value) != bool(_REF.value):  # before the seconds a restore takes
    raise UserError('--src and --ref go together: the source file and its references.')
  restored = inference_flags.restore()
  ensemble = inference_flags.ENSEMBLE.value
  # The result goes to the workdir, or with an ensemble to its first member's.
  workdir = ensemble[0].partition('@')[0] if ensemble else cli.required_workdir()
  what, sources, references = sources_and_references(restored)
  start = time.perf_counter()
  hypotheses = inference.translate_texts(restored, sources, settings, cli.stderr_progress())
  result = {'data': what, 'step': restored.step, 'averaged': inference_flags.AVERAGED.value,
            **({'ensemble': ensemble, 'ensemble_steps': list(restored.steps)} if ensemble
               else {}),
            'decode': dataclasses.asdict(settings),
            'translate_seconds': time.perf_counter() - start,
            **scoring.scores(hypotheses, references, _TOKENIZE.value, _LOWERCASE.value,
                             moses_lang=restored.config.data.target_lang)}
  if not distributed.is_writer():  # on several processes, process 0 reports
    return
  which = (f'ensemble of {len(ensemble)} (steps {", ".join(map(str, restored.steps))})'
           if ensemble else f'step {restored.step}')
  print(f'{what} {which}: BLEU {result["bleu"]:.2f} ({result["bleu_signature"]})'
        f'  chrF {result["chrf"]:.2f} ({result["chrf_signature"]})'
        f'  lowercased BLEU on Moses-tokenized text {result["bleu_moses_lc"]:.2f}', flush=True)
  name = f'ensemble{len(ensemble)}' if ensemble else f'step{restored.step}'
  out = _JSON.value or os.path.join(workdir, f'eval_{what.replace("/", "_")}_{name}.json')
  files.write_atomically(out, json.dumps(result, indent=2).encode())
  if _HYPOTHESES.value:
    with open(_HYPOTHESES.value, 'w', encoding='utf-8') as f:
      f.writelines(h + '\n' for h in hypotheses)


_SPLIT = flags.DEFINE_string('split', 'test', 'Dataset split to score (train, validation, test).')
_SRC = flags.DEFINE_string('src', None, 'Source file to translate instead of a split.')
_REF = flags.DEFINE_string('ref', None, 'Reference translations of --src, line by line.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, "Override the checkpoint's data.data_dir.")
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None, "Override the checkpoint's data.tfds_dir.")
_TOKENIZE = flags.DEFINE_string('tokenize', '13a', "sacreBLEU tokenizer: 13a, intl, none, ...")
_LOWERCASE = flags.DEFINE_bool('lowercase', False, 'Case-insensitive BLEU and chrF.')
_JSON = flags.DEFINE_string('json', None, 'Result file (default WORKDIR/eval_<data>_step<N>.json).')
_HYPOTHESES = flags.DEFINE_string('hypotheses', None, 'Also write the translations here.')

if __name__ == '__main__':
  cli.run(main)
