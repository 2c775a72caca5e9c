"""Greedy BLEU of a workdir's export in CTranslate2 on the test split, beside what our
decoder's would be (`evaluate --decode=greedy`): the export decodes the whole split as ours
does. Prints JSON (and writes it with --record).

  python bench/ctranslate2_bleu.py --workdir=DIR [--record=FILE]

Each sentence gets translate's output limit (its source length + 50 tokens): sentences
are translated in groups of one source length, one `max_decoding_length` per group.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

import ctranslate2
import sacrebleu
import sentencepiece as spm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pod_rehearsal import emit  # noqa: E402

from transformer_jax import inference  # noqa: E402
from transformer_jax.data import pipeline  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--record', default='')
  a = parser.parse_args()
  restored = inference.restore(a.workdir)
  sources, references = pipeline.split_pairs(restored.config, 'test')
  ours = inference.translate_texts(restored, sources,
                                   inference.Settings(method='greedy', beam_size=1))
  out = str(pathlib.Path(tempfile.mkdtemp()) / 'ct2')
  subprocess.run([sys.executable, '-m', 'transformer_jax.export', f'--workdir={a.workdir}',
                  f'--output={out}'], check=True, capture_output=True)
  sp = spm.SentencePieceProcessor(model_file=f'{out}/sentencepiece.model')
  translator = ctranslate2.Translator(out)
  batch = [sp.encode(s, out_type=str)[:255] + ['</s>'] for s in sources]
  theirs = [''] * len(batch)
  for n in sorted(set(map(len, batch))):
    group = [i for i, pieces in enumerate(batch) if len(pieces) == n]
    results = translator.translate_batch([batch[i] for i in group], beam_size=1,
                                         max_decoding_length=n + 50)
    for i, result in zip(group, results):
      theirs[i] = sp.decode(result.hypotheses[0])
  bleu = lambda hyps: round(sacrebleu.corpus_bleu(hyps, [references]).score, 2)
  emit({'benchmark': 'ctranslate2_bleu', 'workdir': a.workdir, 'step': restored.step,
        'sentences': len(sources), 'ours_greedy_bleu': bleu(ours),
        'ctranslate2_greedy_bleu': bleu(theirs),
        'identical_outputs': sum(x == y for x, y in zip(ours, theirs))}, a.record,
       [arg for arg in sys.argv[1:] if not arg.startswith('--workdir')])


if __name__ == '__main__':
  main()
