"""`python -m transformer_jax.export --workdir=DIR --format=ctranslate2 --output=OUT`:
a trained model in the engine people serve translation with.

`ctranslate2`: a CTranslate2 model directory (serving.py builds it), the SentencePiece
model, the training config and a README beside it. Reads the parameters only, as
`translate` does (--step, --averaged, or --workdir=DIR/best).
"""
from __future__ import annotations

import json
import os

from absl import flags

from transformer_jax import cli, inference, inference_flags, serving
from transformer_jax.errors import UserError

FORMATS = ('ctranslate2',)
QUANTIZATIONS = ('float32', 'int8', 'float16')

_FORMAT = flags.DEFINE_string('format', 'ctranslate2', f'One of: {", ".join(FORMATS)}.')
_QUANTIZATION = flags.DEFINE_string(
    'quantization', 'float32', 'CTranslate2 weights: float32, int8 (CPUs) or float16 '
    '(GPUs; untested here).')
_POSITIONS = flags.DEFINE_integer(
    'max_positions', 1024, 'Rows of the position table: the longest source, or output, '
    'the exported model can take (translate: --max_input_len + --max_extra_len).')


def export_ctranslate2(restored: inference.Restored, output: str, quantization: str,
                       positions: int) -> None:
  """A restored checkpoint as a CTranslate2 model directory, its SentencePiece model
  beside it."""
  tokenizer = restored.tokenizer
  pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
  serving.write_ctranslate2(restored.model, restored.config.model, pieces, output,
                            quantization, positions)
  with open(os.path.join(output, serving.SPM_FILE), 'wb') as f:
    f.write(tokenizer.serialized())


def _readme(restored: inference.Restored, workdir: str, fmt: str, quantization: str) -> str:
  data = restored.config.data
  lowercase = ('\nThe model was trained on lowercased text (`data.lowercase`): lowercase '
               'the input (Python\'s `str.lower`) before encoding it; the engine does not.\n'
               if data.lowercase else '')
  return f'''# A transformer_jax model, exported for {fmt}

From `{workdir}`, step {restored.step}; {data.source_lang} -> {data.target_lang};
{restored.config.model.num_encoder_layers}+{restored.config.model.num_decoder_layers} layers,
d_model {restored.config.model.d_model}; weights {quantization}. The training config is
`transformer_jax_config.json`.
{lowercase}
```python
import ctranslate2, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file="OUT/{serving.SPM_FILE}")
translator = ctranslate2.Translator("OUT")
pieces = sp.encode("A sentence.", out_type=str) + ["</s>"]  # EOS: the caller's
out = translator.translate_batch([pieces], beam_size=4, length_penalty=0.6)
print(sp.decode(out[0].hypotheses[0]))
```
'''


def main(argv):
  del argv
  if _FORMAT.value not in FORMATS:
    raise UserError(f'--format={_FORMAT.value}: the formats are {", ".join(FORMATS)}.')
  if _QUANTIZATION.value not in QUANTIZATIONS:
    raise UserError(f'--quantization={_QUANTIZATION.value}: one of '
                    f'{", ".join(QUANTIZATIONS)}.')
  output = inference_flags.OUTPUT.value
  if not output:
    raise UserError('--output is required: the directory to write the exported model to.')
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise UserError(f'--output={output} exists and is not an empty directory; give a new '
                    'one (nothing was written).')
  if inference_flags.ENSEMBLE.value:
    raise UserError('--ensemble cannot be exported: an engine decodes one model.')
  serving.engine()
  restored = inference_flags.restore()
  workdir = cli.required_workdir()
  os.makedirs(output, exist_ok=True)
  export_ctranslate2(restored, output, _QUANTIZATION.value, _POSITIONS.value)
  with open(os.path.join(output, 'transformer_jax_config.json'), 'w') as f:
    json.dump(restored.config.to_dict(), f, indent=1)
  with open(os.path.join(output, 'README.md'), 'w') as f:
    f.write(_readme(restored, workdir, _FORMAT.value, _QUANTIZATION.value))
  print(f'exported step {restored.step} of {workdir} to {output} ({_FORMAT.value}, '
        f'{_QUANTIZATION.value})')


if __name__ == '__main__':
  cli.run(main)
