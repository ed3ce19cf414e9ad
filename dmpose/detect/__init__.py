"""Person detection for top-down pose estimation, in plain torch (no torchvision).

- `nms`: the one NMS (`nms`, `batched_nms`) and the score / NMS / count selection of person boxes (`select_boxes`);
- `fcos`: FCOS ResNet-50-FPN with torchvision's exact key layout (its published COCO weights load unchanged);
- `person`: `PersonDetector` (person boxes in dmpose's coordinates) and `load_person_detector`.
"""

from dmpose.detect.fcos import FCOS, FCOS_COCO_BOX_AP, FCOS_COCO_WEIGHTS_URL, fcos_resnet50_fpn
from dmpose.detect.nms import BoxSelection, batched_nms, box_iou, nms, select_boxes
from dmpose.detect.person import (
    DEFAULT_DET_THR,
    DEFAULT_NMS_THR,
    PersonDetector,
    load_person_detector,
    read_state_dict,
)

__all__ = ["DEFAULT_DET_THR", "DEFAULT_NMS_THR", "FCOS", "FCOS_COCO_BOX_AP", "FCOS_COCO_WEIGHTS_URL", "BoxSelection",
           "PersonDetector", "batched_nms", "box_iou", "fcos_resnet50_fpn", "load_person_detector", "nms",
           "read_state_dict", "select_boxes"]
