"""Image metrics as plain modules: feature networks, FID/sFID/KID/IS (ADM's definitions with the standard
Inception), precision/recall.

- :class:`FeatureNet` and its three backends: :class:`TFInception` (the standard FID network),
  :class:`ClassifierFeatures` (barlab's domain classifier) and :class:`RandomFeatures` (tests only);
- :class:`ImageMetrics`: one pass of the network per image, every metric from it;
- :class:`Reference`: statistics to compare against (barlab files, ADM reference batches, image sets);
- ``evaluation``: rFID of a tokenizer and gFID & co. of a generator's class-balanced samples;
- ``metric_setup``: the ``metrics`` config to a feature network and reference statistics;
- ``classifier_training``: barlab's evaluation classifier, trained once per dataset on first use.
"""

from barlab.metrics.classifier import ClassifierFeatures, SmallCNN
from barlab.metrics.feature_net import FeatureNet, Features
from barlab.metrics.image_metrics import ImageMetrics
from barlab.metrics.inception import TFInception, find_inception_weights
from barlab.metrics.precision_recall import precision_recall
from barlab.metrics.random_net import RandomFeatures
from barlab.metrics.reference import Reference, reference_from_npz, save_reference

__all__ = ["ClassifierFeatures", "FeatureNet", "Features", "ImageMetrics", "RandomFeatures", "Reference",
           "SmallCNN", "TFInception", "find_inception_weights", "precision_recall", "reference_from_npz",
           "save_reference"]
