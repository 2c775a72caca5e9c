"""Greedy BLEU of a workdir's exports on the test split, beside our own decoder's (what
`evaluate --decode=greedy` scores): each engine decodes the whole split as ours does.
Prints JSON (and writes it with --record).

  python bench/export_bleu.py --workdir=DIR [--engines=ctranslate2,huggingface] [--record=F]

Each sentence gets translate's output limit (its source length + 50 tokens): sentences
are translated in groups of one source length, one output limit per group. Transformers
is also run with its LayerNorm epsilon set to ours (1e-6) after loading, which no file
can ask for: what is left of the difference then is not the epsilon's.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

import sacrebleu

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pod_rehearsal import emit  # noqa: E402

from transformer_jax import inference  # noqa: E402
from transformer_jax.data import pipeline  # noqa: E402

MAX_INPUT = 256  # translate's --max_input_len, EOS included
BATCH = 64


def export(workdir: str, fmt: str) -> str:
  out = str(pathlib.Path(tempfile.mkdtemp()) / fmt)
  subprocess.run([sys.executable, '-m', 'transformer_jax.export', f'--workdir={workdir}',
                  f'--format={fmt}', f'--output={out}'], check=True, capture_output=True)
  return out


def by_length(batch: list[list], translate) -> list:
  """translate(group, limit) on groups of sources of one length, in input order."""
  out = [None] * len(batch)
  for n in sorted(set(map(len, batch))):
    group = [i for i, source in enumerate(batch) if len(source) == n]
    for start in range(0, len(group), BATCH):
      part = group[start:start + BATCH]
      for i, result in zip(part, translate([batch[i] for i in part], n + 50)):
        out[i] = result
  return out


def ctranslate2_outputs(directory: str, sources: list[str]) -> list[str]:
  import ctranslate2  # noqa: PLC0415
  import sentencepiece as spm  # noqa: PLC0415
  sp = spm.SentencePieceProcessor(model_file=f'{directory}/sentencepiece.model')
  translator = ctranslate2.Translator(directory)
  batch = [sp.encode(s, out_type=str)[:MAX_INPUT - 1] + ['</s>'] for s in sources]
  results = by_length(batch, lambda group, limit: translator.translate_batch(
      group, beam_size=1, max_decoding_length=limit))
  return [sp.decode(r.hypotheses[0]) for r in results]


def huggingface_outputs(directory: str, sources: list[str], epsilon=None) -> list[str]:
  import torch  # noqa: PLC0415
  from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, logging  # noqa: PLC0415
  logging.set_verbosity_error()  # not a warning per group that max_new_tokens wins
  tokenizer = AutoTokenizer.from_pretrained(directory)
  model = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
  if epsilon is not None:
    for module in model.modules():
      if isinstance(module, torch.nn.LayerNorm):
        module.eps = epsilon
  batch = [tokenizer(s, truncation=True, max_length=MAX_INPUT)['input_ids'] for s in sources]

  def translate(group, limit):
    with torch.no_grad():
      out = model.generate(input_ids=torch.tensor(group), num_beams=1, do_sample=False,
                           max_new_tokens=limit)
    return tokenizer.batch_decode(out, skip_special_tokens=True)
  return by_length(batch, translate)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--engines', default='ctranslate2,huggingface')
  parser.add_argument('--record', default='')
  a = parser.parse_args()
  restored = inference.restore(a.workdir)
  sources, references = pipeline.split_pairs(restored.config, 'test')
  ours = inference.translate_texts(restored, sources,
                                   inference.Settings(method='greedy', beam_size=1))
  bleu = lambda hyps: round(sacrebleu.corpus_bleu(hyps, [references]).score, 2)
  record = {'benchmark': 'export_bleu', 'workdir': a.workdir, 'step': restored.step,
            'sentences': len(sources), 'ours_greedy_bleu': bleu(ours)}
  runs = {}
  for engine in a.engines.split(','):
    directory = export(a.workdir, engine)
    if engine == 'ctranslate2':
      runs[engine] = ctranslate2_outputs(directory, sources)
    else:
      runs[engine] = huggingface_outputs(directory, sources)
      runs[f'{engine}_epsilon_1e-6'] = huggingface_outputs(directory, sources, 1e-6)
  for name, theirs in runs.items():
    record[f'{name}_greedy_bleu'] = bleu(theirs)
    record[f'{name}_identical_outputs'] = sum(x == y for x, y in zip(ours, theirs))
  emit(record, a.record, [arg for arg in sys.argv[1:] if not arg.startswith('--workdir')])


if __name__ == '__main__':
  main()
