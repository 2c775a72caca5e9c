"""A scripted stand-in for `gcloud`, for the launcher's supervise tests (GCLOUD=this).

State lives in the JSON file $FAKE_GCLOUD_STATE:
  states     what each `describe` answers, in turn (the last one repeats); NOT_FOUND fails
  creates    how many `create` calls fail for lack of capacity before one succeeds
  done_after the number of train launches after which WORKDIR/done.json exists
  running    whether `pgrep` of train succeeds
and every call is appended to `calls`.
"""
import json
import os
import sys


def main(argv):
  path = os.environ['FAKE_GCLOUD_STATE']
  with open(path) as f:
    state = json.load(f)
  state['calls'].append(argv)
  code, out = 0, ''
  if 'describe' in argv:
    now = state['states'].pop(0) if len(state['states']) > 1 else state['states'][0]
    code, out = (1, '') if now == 'NOT_FOUND' else (0, now)
  elif 'create' in argv and state['creates'] > 0:
    state['creates'] -= 1
    code = 1  # "There is no more capacity in the zone"
  elif argv[:2] == ['storage', 'ls']:
    code = 0 if state['trains'] >= state['done_after'] else 1
  elif 'ssh' in argv:
    command = next(a for a in argv if a.startswith('--command='))
    if '-m transformer_jax.train' in command:
      state['trains'] += 1
    elif 'pgrep' in command:
      code = 0 if state['running'] else 1
  with open(path, 'w') as f:
    json.dump(state, f)
  print(out)
  return code


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
