"""distillw2v2: two-stage distillation of wav2vec 2.0 into a small streaming student (DistillW2V2)."""

from setuptools import find_packages, setup

# torch is listed without a pin so that a user's existing torch is kept; tools/install.sh installs the
# CPU wheel torch==2.13.0 first on a machine without one (otherwise pip would fetch a CUDA build).
install_requires = [
    "torch>=2.4",
    "numpy",
    "lhotse==1.33.0",
    "urllib3",  # imported by lhotse 1.33 without being declared
    "soundfile",
    "kaldifst>=1.8",
    "kaldilm>=1.15",
    "kaldi-decoder>=0.3",
    "kaldialign>=0.12",
    "kaldi-native-fbank>=1.23",
    "sentencepiece>=0.2",
    "ijson>=3.2",  # GigaSpeech.json (gigabytes at XL) streamed in stage 0
    "jiwer>=4.0",
    "pyyaml",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "safetensors",
]

extras_require = {
    "dev": ["pytest>=8", "pytest-timeout", "ruff==0.17.6"],  # ruff pinned: its formatting changes between versions
    "onnx": ["onnx", "onnxruntime", "sherpa-onnx"],
    "hf": ["transformers>=4.40"],
}
extras_require["all"] = sorted({d for v in extras_require.values() for d in v})

setup(
    name="distillw2v2",
    version="0.1.0",
    description="Recipes and library for distilling wav2vec 2.0 into small streaming LF-MMI students",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["distill", "distill.*"]),
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras_require,
    license="Apache-2.0",
)
