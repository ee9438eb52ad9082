"""distillw2v2: reproduce DistillW2V2 (Fu et al., 2023) with Kaldi-style recipes and pure-PyTorch LF-MMI."""

__version__ = "0.1.0"
