"""dmpose: 2D human pose estimation with heatmap distribution matching.

Coordinate convention (everywhere in dmpose): in every image space (original image, input crop,
heatmap) pixel centres sit at integer coordinates; pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5),
x to the right, y down. Keypoints passed to the loss and returned by the decoders are in heatmap pixels.
"""

__version__ = "0.1.0"

from dmpose.codec import DMCodec, GaussianCodec
from dmpose.decode import decode_2x2, decode_argmax
from dmpose.eval.coco import evaluate_coco
from dmpose.eval.evaluate import evaluate_checkpoint
from dmpose.eval.mpii import pckh
from dmpose.eval.runner import predict_dataset
from dmpose.kernels import triton_status
from dmpose.loss import DMLoss, MSELoss, demanders, dm_loss, heatmap_weights, mse_loss
from dmpose.models import build_model, load_model, save_checkpoint

__all__ = [
    "__version__",
    "DMCodec",
    "GaussianCodec",
    "dm_loss",
    "DMLoss",
    "mse_loss",
    "MSELoss",
    "demanders",
    "heatmap_weights",
    "decode_2x2",
    "decode_argmax",
    "evaluate_coco",
    "evaluate_checkpoint",
    "predict_dataset",
    "pckh",
    "build_model",
    "load_model",
    "save_checkpoint",
    "triton_status",
]
