"""`python -m transformer_jax.goodput --workdir=DIR`: where a run's time went, across
every relaunch (the segments under DIR/goodput, see `segments.py`).

Prints one JSON object (goodput, recomputed_steps, productive and wall seconds, badput in
seconds by cause, each segment's exit, and each launch `launch/tpu.py supervise` made,
phase by phase), then one console line on stderr.
"""
from __future__ import annotations

import json
import sys

from transformer_jax import cli, segments
from transformer_jax.errors import UserError


def main(argv):
  del argv
  workdir = cli.required_workdir()
  found = segments.read(workdir)
  if not found:
    raise UserError(f'{workdir} holds no run records ({segments.GOODPUT_DIR}/): train in '
                    'it with this version first.')
  summary = segments.summarize(found)
  summary['launches'] = segments.launches(segments.read(workdir, 'supervise'), found)
  print(json.dumps(summary, indent=1))
  worst = max(summary['badput_s'].items(), key=lambda kv: kv[1])
  print(f"goodput {summary['goodput']:.1%} over {summary['wall_s']:.0f} s and "
        f"{summary['segments']} start(s); {summary['recomputed_steps']} step(s) computed "
        f"twice; most lost to {worst[0]} ({worst[1]:.0f} s)", file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
