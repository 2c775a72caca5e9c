"""`bench/decode.py --workdir=DIR`: the user's case. Real sentences that end at EOS, our
`translate` path against CTranslate2 on the same exported weights, each engine at
several batch sizes, beam 4 and greedy.

Every round translates `--sentences` distinct lines never used before (the synthetic
corpus's test distribution drawn from a fresh seed, or the next lines of `--lines`), all
engines and batch sizes alternating within the round; the first `--warmup` rounds
(compiling ours for the shapes of each batch size, loading theirs) are not counted. Each
figure is the median over rounds of sentences/s, tokenization included for both engines.

Ours is measured in its steady state, as a bulk job runs after its first windows: each
counted round's lines first go through ours once untimed, so that every program their
shapes need is compiled (a program per source-length bucket, rows and cache length, each
once per process; nothing else carries over: no output is cached). Larger batches need
more shapes, so without this a round of 1,000 lines at 16,384 tokens spent more time
compiling than decoding. `first_pass_s` reports that untimed pass of the first counted
round, compilation included. Both engines run in this
process, so on the same cores; CTranslate2 with `intra_threads` = the cores.

Ours is sized by `--batch_tokens` (rows capped at 1024) and, for the rows comparison, by
`--batch_size` rows with no token limit; CTranslate2 by `max_batch_size` (`all` = the
whole set in one call, its default). Also reported: our padding efficiency (tokens of
the translations / rows x steps computed).
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time

from transformer_jax import inference, serving
from transformer_jax.data import synthetic

UNLIMITED = 1 << 30


def sentence_sets(args):
  """An endless supply of sets of `args.sentences` distinct lines, new lines each set."""
  if args.lines:
    with open(args.lines, encoding='utf-8') as f:
      lines = list(dict.fromkeys(line.rstrip('\n') for line in f if line.strip()))
    for start in itertools.count(0, args.sentences):
      chunk = [lines[(start + i) % len(lines)] for i in range(args.sentences)]
      yield chunk
  seen = set()
  for seed in itertools.count(10_000):
    chunk = []
    for en, _ in synthetic.generate_pairs(seed, 4 * args.sentences):
      if en not in seen and len(chunk) < args.sentences:
        seen.add(en)
        chunk.append(en)
    yield chunk


def our_runs(restored, args) -> dict:
  runs = {}
  for method in args.methods.split(','):
    base = dict(method=method, beam_size=4 if method == 'beam' else 1)
    for tokens in map(int, args.batch_tokens.split(',')):
      s = inference.Settings(**base, batch_size=1024, batch_tokens=tokens)
      runs[('ours', method, f'{tokens}_tokens')] = lambda lines, s=s: \
          inference.translate_texts(restored, lines, s)
    for rows in map(int, args.rows.split(',')):
      s = inference.Settings(**base, batch_size=rows, batch_tokens=UNLIMITED)
      runs[('ours', method, f'{rows}_rows')] = lambda lines, s=s: \
          inference.translate_texts(restored, lines, s)
  return runs


def ctranslate2_runs(restored, args, cores: int) -> dict:
  import ctranslate2  # noqa: PLC0415 (the export extra)
  sp = restored.tokenizer._sp  # noqa: SLF001
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  runs = {}
  for quantization in args.quantization.split(','):
    directory = tempfile.mkdtemp(prefix=f'ct2_{quantization}_')
    serving.write_ctranslate2(restored.model, restored.config.model, pieces, directory,
                              quantization, positions=inference.Settings().max_input_len + 52)
    translator = ctranslate2.Translator(directory, device='cpu', intra_threads=cores,
                                        inter_threads=1)

    def translate(lines, beam, rows, t=translator):
      encoded = [sp.encode_as_pieces(line.lower() if restored.tokenizer.lowercase else line) + ['</s>']
                 for line in lines]
      results = t.translate_batch(encoded, beam_size=beam, length_penalty=0.6,
                                  max_decoding_length=max(map(len, encoded)) + 50,
                                  max_batch_size=rows or len(encoded))
      return [sp.decode_pieces(r.hypotheses[0]) for r in results]

    for method in args.methods.split(','):
      for rows in args.ct2_batches.split(','):
        runs[(f'ctranslate2_{quantization}', method, f'{rows}_rows')] = (
            lambda lines, m=method, r=rows: translate(
                lines, 4 if m == 'beam' else 1, 0 if r == 'all' else int(r)))
  return runs


def compare(args) -> dict:
  cores = len(os.sched_getaffinity(0))
  restored = inference.restore(args.workdir)
  runs = our_runs(restored, args)
  if args.quantization:
    runs.update(ctranslate2_runs(restored, args, cores))
  sets = sentence_sets(args)
  times = {key: [] for key in runs}
  work = {key: [] for key in runs if key[0] == 'ours'}
  first_pass: dict = {}
  for round_ in range(args.warmup + args.repeats):
    lines = next(sets)
    for key, run in runs.items():
      if key[0] == 'ours' and round_ >= args.warmup:
        start = time.perf_counter()
        run(lines)  # compile what these lines' shapes need (see the module's docstring)
        first_pass.setdefault(key, round(time.perf_counter() - start, 1))
      before = dict(inference.WORK)
      start = time.perf_counter()
      run(lines)
      if round_ >= args.warmup:
        times[key].append(time.perf_counter() - start)
        if key in work:
          work[key].append({k: inference.WORK[k] - before.get(k, 0) for k in inference.WORK})
  engines: dict = {}
  for (engine, method, batch), measured in times.items():
    figures = engines.setdefault(engine, {}).setdefault(method, {})
    figures[batch] = round(args.sentences / statistics.median(measured), 1)
    if engine == 'ours':
      done = work[(engine, method, batch)]
      figures[f'{batch}_first_pass_s'] = first_pass[(engine, method, batch)]
      figures[f'{batch}_padding_efficiency'] = round(
          sum(w['output_tokens'] for w in done) / sum(w['row_steps'] for w in done), 3)
  best = {engine: {method: max((v, k) for k, v in figures.items() if k.endswith(('_rows', '_tokens')))
                   for method, figures in methods.items()}
          for engine, methods in engines.items()}
  ratios = {}
  for engine in engines:
    if engine != 'ours':
      ratios[f'ours_best_vs_{engine}_best'] = {
          method: round(best['ours'][method][0] / best[engine][method][0], 2)
          for method in best['ours'] if method in best[engine]}
  return {'benchmark': 'decode_real_sentences', 'workdir': args.workdir, 'warmup': args.warmup,
          'lines': args.lines or 'synthetic test distribution (fresh seeds)',
          'sentences': args.sentences, 'rounds': args.repeats, 'threads': cores,
          'sentences_per_s': engines,
          'best': {e: {m: {'batch': b, 'sentences_per_s': v} for m, (v, b) in ms.items()}
                   for e, ms in best.items()},
          'ratios': ratios}


def add_arguments(parser) -> None:
  parser.add_argument('--workdir', default='', help='real-sentence mode: a trained workdir')
  parser.add_argument('--lines', default='', help='real-sentence mode: lines to translate '
                      '(default: the synthetic corpus)')
  parser.add_argument('--sentences', type=int, default=1000)
  parser.add_argument('--warmup', type=int, default=2, help='rounds not counted (compiles)')
  parser.add_argument('--methods', default='beam,greedy')
  parser.add_argument('--batch_tokens', default='4096,8192,16384')
  parser.add_argument('--rows', default='64,256')
  parser.add_argument('--ct2_batches', default='32,64,256,all')


if __name__ == '__main__':
  print(json.dumps({'error': 'run bench/decode.py --workdir=DIR'}))
