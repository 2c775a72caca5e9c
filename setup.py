"""transformer_jax: the Transformer of "Attention Is All You Need" in JAX / Flax NNX."""
from setuptools import find_packages, setup

JAX = '0.10.2'
# A workdir in a GCS bucket: gcsfs is etils.epath's gs:// backend (vocabulary, metrics),
# google-cloud-storage tensorboardX's; Orbax reaches GCS through tensorstore itself.
GCS = ['gcsfs==2026.10.1', 'google-cloud-storage==3.17.1']
BENCH = ['matplotlib==3.11.2']  # bench/quality_multi30k.py's plot
# The serving engines `export` writes for. torch==2.13.0 also matches the CPU build
# (2.13.0+cpu), which pip takes where an index offers it: about a tenth of the CUDA one.
EXPORT = ['ctranslate2==4.8.5', 'transformers==5.25.0', 'torch==2.13.0']

setup(
    name='transformer_jax',
    version='0.1.0',
    description='The Transformer of "Attention Is All You Need": JAX/Flax NNX training '
                'system for Cloud TPU and CPU',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',  # jax, flax, orbax and grain need it
    packages=find_packages(include=['transformer_jax', 'transformer_jax.*']),
    install_requires=[
        f'jax=={JAX}',
        f'jaxlib=={JAX}',
        'flax==0.12.8',
        'optax==0.2.8',
        'orbax-checkpoint==0.12.8',
        'tensorflow-datasets==4.9.10',
        'importlib_resources==7.1.0',  # tfds needs it on Python 3.11 but does not declare it
        'grain==0.2.18',
        'array-record==0.8.6',
        'sentencepiece==0.2.3',
        'sacrebleu==2.6.0',
        'sacremoses==0.2.0',  # Moses-tokenized BLEU, as Multi30k papers report it
        'absl-py==2.5.1',
        'ml-collections==1.1.0',
        'tensorboardX==2.6.5',  # TensorBoard event files without TensorFlow
        'etils[epath]==1.15.0',  # one file API for local disks and buckets
        'numpy>=2.0,<2.5',
    ],
    extras_require={
        # libtpu lets the tests compile for TPU topologies on a CPU host (`aot`).
        # the GCS emulator lets the tests run a workdir in a bucket without a network.
        'test': ['pytest==9.2.0', f'jax[tpu]=={JAX}', 'gcp-storage-emulator==2026.7.19', *GCS,
                 *BENCH, *EXPORT],
        'export': EXPORT,
        'tf': ['tensorflow-cpu==2.21.0'],  # only for TFDS catalog builders (WMT)
        'gcs': GCS,
        'bench': BENCH,
        'tpu': [f'jax[tpu]=={JAX}', *GCS],  # libtpu (also `aot` on a CPU host) and GCS
        'cuda': [f'jax[cuda12]=={JAX}', *GCS],  # NVIDIA GPUs: JAX's CUDA 12 wheels
    },
    entry_points={'console_scripts': ['transformer-jax=transformer_jax.cli:main']},
)
