"""Training losses: LF-MMI (pure PyTorch forward-backward), LF-MMI distillation, reductions."""

from distill.losses.kd import lfmmi_kd_loss
from distill.losses.lfmmi import LFMMILoss, den_log_z, den_occupancy
from distill.losses.reduce import reduce_finite

__all__ = ["LFMMILoss", "den_log_z", "den_occupancy", "lfmmi_kd_loss", "reduce_finite"]
