"""`python -m transformer_jax.export --workdir=DIR --format=ctranslate2|huggingface
--output=OUT`: a trained model in the engines people serve translation with.

- `ctranslate2`: a CTranslate2 model directory (serving.py builds it), the SentencePiece
  model beside it;
- `huggingface`: a Transformers `MarianMTModel` with its `MarianTokenizer`
  (huggingface.py builds them), post-norm models only; a model imported from one
  (import_model.py) goes back with its own vocabulary and ids.
Both get the training config and a README (origin, how to load it, the test BLEU that
`evaluate` recorded for this checkpoint). Reads the parameters only, as `translate` does
(--step, --averaged, or --workdir=DIR/best).
"""
from __future__ import annotations

import json
import os

from absl import flags

from transformer_jax import cli, files, huggingface, inference, inference_flags, serving
from transformer_jax.errors import UserError

FORMATS = ('ctranslate2', 'huggingface')
QUANTIZATIONS = ('float32', 'int8', 'float16')

_QUANTIZATION = flags.DEFINE_string(
    'quantization', 'float32', 'CTranslate2 weights: float32, int8 (CPUs) or float16 '
    '(GPUs; untested here). Transformers models are float32.')
_POSITIONS = flags.DEFINE_integer(
    'max_positions', 1024, 'Positions the exported model takes: the longest source, or '
    'output (translate: --max_input_len + --max_extra_len).')

_LOAD = {
    'ctranslate2': f'''import ctranslate2, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file="OUT/{serving.SPM_FILE}")
translator = ctranslate2.Translator("OUT")
pieces = sp.encode("A sentence.", out_type=str) + ["</s>"]  # EOS: the caller's
out = translator.translate_batch([pieces], beam_size=4, length_penalty=0.6)
print(sp.decode(out[0].hypotheses[0]))''',
    'huggingface': '''from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("OUT")
model = AutoModelForSeq2SeqLM.from_pretrained("OUT")  # MarianMTModel
batch = tokenizer(["A sentence."], return_tensors="pt", padding=True)
out = model.generate(**batch)  # beam 4, up to --max_positions tokens: generation_config.json
print(tokenizer.batch_decode(out, skip_special_tokens=True))''',
}


def export(restored: inference.Restored, fmt: str, output: str, quantization: str,
           positions: int) -> None:
  """A restored checkpoint as the engine's model directory `output` (existing)."""
  tokenizer, cfg = restored.tokenizer, restored.config.model
  if fmt == 'huggingface':
    huggingface.write_huggingface(restored.model, cfg, tokenizer, output, positions)
    return
  pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
  serving.write_ctranslate2(restored.model, cfg, pieces, output, quantization, positions)
  with open(os.path.join(output, serving.SPM_FILE), 'wb') as f:
    f.write(tokenizer.serialized())


def recorded_scores(workdir: str, step: int, averaged: bool) -> list[dict]:
  """The `evaluate` records of this checkpoint in `workdir`."""
  records = []
  for path in sorted(files.path(workdir).glob('eval_*.json')):
    try:
      record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
      continue  # not one of evaluate's
    if (isinstance(record, dict) and 'ensemble' not in record and 'bleu' in record
        and record.get('step') == step and record.get('averaged') == averaged):
      records.append(record)
  return records


def _scores_text(records: list[dict]) -> str:
  if not records:
    return 'No `evaluate` score was recorded for this checkpoint.'
  lines = []
  for r in records:
    d = r.get('decode', {})
    how = 'greedy' if d.get('method') == 'greedy' else (
        f'beam {d.get("beam_size")}, alpha {d.get("alpha")}')
    lines.append(f'- {r["data"]}: BLEU {r["bleu"]:.2f} ({how}; {r["bleu_signature"]}), '
                 f'{r.get("sentences", "?")} sentences, by our own decoder')
  return 'Scores `evaluate` recorded for this checkpoint:\n' + '\n'.join(lines)


def readme(restored: inference.Restored, workdir: str, fmt: str, quantization: str,
           records: list[dict]) -> str:
  data, model = restored.config.data, restored.config.model
  lowercase = ('\nThe model was trained on lowercased text (`data.lowercase`): lowercase '
               'the input (Python\'s `str.lower`) before encoding it; the engine does not.\n'
               if data.lowercase else '')
  weights = quantization if fmt == 'ctranslate2' else 'float32'
  epsilon = ('' if fmt == 'ctranslate2' or model.layer_norm_epsilon ==
             huggingface.LAYER_NORM_EPSILON else
             f'\nMarian\'s LayerNorm epsilon is 1e-5 (this model\'s {model.layer_norm_epsilon:g}), '
             'which no file can change: log-probabilities differ from ours by ~1e-5 '
             '(measured), outputs very rarely.\n')
  return f'''# A transformer_jax model, exported for {fmt}

From `{workdir}`, step {restored.step}; {data.source_lang} -> {data.target_lang};
{model.num_encoder_layers}+{model.num_decoder_layers} layers, d_model {model.d_model}; \
weights {weights}. The training config is `transformer_jax_config.json`.
{lowercase}{epsilon}
{_scores_text(records)}

```python
{_LOAD[fmt]}
```
'''


def _format() -> str:
  return inference_flags.FORMAT.value or FORMATS[0]


def _check_request(output: str) -> None:
  if _format() not in FORMATS:
    raise UserError(f'--format={_format()}: the formats are {", ".join(FORMATS)}.')
  if _QUANTIZATION.value not in QUANTIZATIONS:
    raise UserError(f'--quantization={_QUANTIZATION.value}: one of '
                    f'{", ".join(QUANTIZATIONS)}.')
  if _format() == 'huggingface' and _QUANTIZATION.value != 'float32':
    raise UserError('--quantization is for --format=ctranslate2; a Transformers model is '
                    'written in float32 (quantize it with Transformers\' own tools).')
  if not output:
    raise UserError('--output is required: the directory to write the exported model to.')
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise UserError(f'--output={output} exists and is not an empty directory; give a new '
                    'one (nothing was written).')
  if inference_flags.ENSEMBLE.value:
    raise UserError('--ensemble cannot be exported: an engine decodes one model.')


def main(argv):
  del argv
  output, fmt = inference_flags.OUTPUT.value, _format()
  _check_request(output)
  if fmt == 'huggingface':
    huggingface.library()
  else:
    serving.engine()
  restored = inference_flags.restore()
  if fmt == 'huggingface':  # refusals before OUT exists
    huggingface.check_exportable(restored.config.model)
  else:
    serving.check_exportable(restored.config.model, restored.tokenizer)
  workdir = cli.required_workdir()
  os.makedirs(output, exist_ok=True)
  export(restored, fmt, output, _QUANTIZATION.value, _POSITIONS.value)
  with open(os.path.join(output, 'transformer_jax_config.json'), 'w') as f:
    json.dump(restored.config.to_dict(), f, indent=1)
  records = recorded_scores(workdir, restored.step, inference_flags.AVERAGED.value)
  with open(os.path.join(output, 'README.md'), 'w') as f:
    f.write(readme(restored, workdir, fmt, _QUANTIZATION.value, records))
  print(f'exported step {restored.step} of {workdir} to {output} ({fmt}, '
        f'{_QUANTIZATION.value if fmt == "ctranslate2" else "float32"})')


if __name__ == '__main__':
  cli.run(main)
