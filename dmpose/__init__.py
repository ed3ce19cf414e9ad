"""dmpose: 2D human pose estimation with heatmap distribution matching.

Coordinate convention (everywhere in dmpose): in every image space (original image, input crop,
heatmap) pixel centres sit at integer coordinates; pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5),
x to the right, y down. Keypoints passed to the loss and returned by the decoders are in heatmap pixels.
"""

from dmpose.codec import DMCodec, GaussianCodec, build_codec, heatmap_weights
from dmpose.decode import decode_2x2, decode_argmax
from dmpose.eval.coco import evaluate_coco
from dmpose.eval.evaluate import evaluate_checkpoint
from dmpose.eval.mpii import pckh
from dmpose.eval.runner import predict_dataset
from dmpose.kernels import triton_status
from dmpose.loss import DMLoss, MSELoss, demanders, dm_loss, mse_loss
from dmpose.models import build_model, load_model, read_checkpoint_spec, save_checkpoint
from dmpose.predict import Person, Predictor
from dmpose.spec import CodecSpec, DMLossOptions, KeypointSpec, Normalisation, PoseSpec, SpecError
from dmpose.version import __version__

__all__ = [
    "__version__",
    "DMCodec",
    "GaussianCodec",
    "build_codec",
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
    "read_checkpoint_spec",
    "PoseSpec",
    "KeypointSpec",
    "Normalisation",
    "CodecSpec",
    "DMLossOptions",
    "SpecError",
    "triton_status",
    "Predictor",
    "Person",
]
