"""Writes tests/data/multi30k/: synthetic sentence pairs in Multi30k task 1's file layout
(gzipped `{train,val,test_2016_flickr}.{en,de}.gz`, one sentence per line), so the
`multi30k` builder and the recipe benchmark are tested without the real corpus.

  python tests/data/make_multi30k.py   # deterministic: rerunning rewrites the same bytes
"""
import gzip
import pathlib

from transformer_jax.data import synthetic

SIZES = {'train': 400, 'val': 40, 'test_2016_flickr': 40}


def main():
  out = pathlib.Path(__file__).resolve().parent / 'multi30k'
  out.mkdir(exist_ok=True)
  pairs = synthetic.splits(train_size=SIZES['train'], eval_size=SIZES['val'], seed=30)
  for stem, split in zip(SIZES, ('train', 'validation', 'test')):
    for lang, side in (('en', 0), ('de', 1)):
      text = ''.join(pair[side] + '\n' for pair in pairs[split])
      with open(out / f'{stem}.{lang}.gz', 'wb') as f:  # mtime=0: the same bytes every run
        with gzip.GzipFile(fileobj=f, mode='wb', mtime=0, filename='') as gz:
          gz.write(text.encode('utf-8'))


if __name__ == '__main__':
  main()
