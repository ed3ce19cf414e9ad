"""Top-down prediction on images, folders and videos (the library side of `dmpose predict`).

- `predictor`: `Predictor` (a checkpoint loaded once), `Person`, `VideoFrame`, the crops it builds;
- `media`: images, videos and the command line's inputs (files, folders, globs);
- `boxes`: person boxes, as arrays and as box files (COCO detections or a {file: boxes} map);
- `outputs`: the files `dmpose predict` writes (JSON records, overlays, annotated videos, COCO results).

Coordinates everywhere: pixel centres at integer coordinates, x right, y down, (x, y) last.
"""

from dmpose.predict.boxes import (
    BoxEntry,
    as_box_array,
    boxes_for_input,
    coco_id_from_name,
    full_frame_box,
    load_boxes_file,
)
from dmpose.predict.media import (
    IMAGE_EXTENSIONS,
    VIDEO_CODEC,
    VIDEO_EXTENSIONS,
    AnnotatedVideoWriter,
    collect_inputs,
    is_video,
    iter_video,
    load_image,
    open_video,
    video_info,
)
from dmpose.predict.outputs import PredictionOutputs
from dmpose.predict.predictor import (
    BOX_PADDING,
    Person,
    Predictor,
    VideoFrame,
    build_crops,
    read_checkpoint_spec_for_predict,
)

__all__ = [
    "BOX_PADDING",
    "IMAGE_EXTENSIONS",
    "VIDEO_CODEC",
    "VIDEO_EXTENSIONS",
    "AnnotatedVideoWriter",
    "BoxEntry",
    "Person",
    "PredictionOutputs",
    "Predictor",
    "VideoFrame",
    "as_box_array",
    "boxes_for_input",
    "build_crops",
    "coco_id_from_name",
    "collect_inputs",
    "full_frame_box",
    "is_video",
    "iter_video",
    "load_boxes_file",
    "load_image",
    "open_video",
    "read_checkpoint_spec_for_predict",
    "video_info",
]
