"""`python -m transformer_jax.aot --config=FILE --topology=v5e:4x4`: compile the real
train step for a Cloud TPU topology on this CPU host, ahead of time, and the beam-search
decoder too (`topology.py` says how). Prints the report as JSON; exits 3 when the step
does not fit, with the fixes to try.
"""
from __future__ import annotations

import json
import sys

from absl import flags

from transformer_jax import cli, topology
from transformer_jax.errors import UserError


def main(argv):
  del argv
  config = cli.resolved_config()
  if not _TOPOLOGY.value:
    raise UserError('--topology is required, e.g. --topology=v5e:4x4.')
  result = topology.report(config, _TOPOLOGY.value, _DECODE.value, _BREAKDOWN.value)
  print(json.dumps(result, indent=2))
  if not result['fits']:
    need = (f'{result["memory_per_chip_bytes"]["total"] / 2**30:.1f} GiB per chip'
            if 'memory_per_chip_bytes' in result else f'more ({result["compiler"]})')
    print(f'error: the train step needs {need} but a {_TOPOLOGY.value.split(":")[0]} chip '
          f'has {result["hbm_per_chip_bytes"] / 2**30:.0f} GiB. Try: '
          + '; '.join(result['suggestions']) + '.', file=sys.stderr)
    sys.exit(3)


_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5e:4x4, v4:2x2x1, v5p:4x4x4.')
_BREAKDOWN = flags.DEFINE_bool(
    'breakdown', False, "Also where the step's bytes go: the top instructions by bytes and "
    'by the compiler\'s cycle estimate, and bytes by JAX operation (topology.breakdown).')
_DECODE = flags.DEFINE_bool('compile_decode', True, 'Also compile beam search '
                            '(train.eval_batch_size sources of data.max_len tokens, beam 4).')

if __name__ == '__main__':
  cli.run(main)
