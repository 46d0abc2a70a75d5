"""Lightning callbacks of the evaluation protocols (docs/design.md section 4).

* :class:`TopLayerMetrics`: clustering scores of the top GMM layer and its loss (``test/cluster/*``,
  ``test/top/loss``); used by ``evaluate.py``, and in training with ``'callbacks=[default,top_layer]'``.
* :class:`OutlierDetection`: ROC AUC of held-out classes or another dataset against the test set
  (``test/auroc``, ROC curve as PNG and in W&B); used by ``experiment=outliers_mnist|outliers_fashion``.
* :class:`SampleQualityNDB`: NDB and JS divergence of samples drawn after testing (``test/ndb_ratio``,
  ``test/ndb_js``, sharpened as well); ``python evaluate.py ckpt_path=... 'callbacks=[eval,ndb]'``.
* :class:`ProgressBar`: Lightning's tqdm bar, redrawn by time (``callbacks.progress_bar.refresh_seconds``)
  instead of every N steps; in every run's default callbacks.
* :class:`TrainingSpeed`: wall time of ``trainer.fit`` and training images per second (read as
  attributes after fit; ``callbacks=[default,train_speed]``); used by the results pipeline (``dcgmm.results.jobs``).
"""

from dcgmm.app.callbacks.outliers import OutlierDetection
from dcgmm.app.callbacks.progress import ProgressBar
from dcgmm.app.callbacks.sample_quality import SampleQualityNDB
from dcgmm.app.callbacks.timing import TrainingSpeed
from dcgmm.app.callbacks.top_layer import TopLayerMetrics

__all__ = ["OutlierDetection", "ProgressBar", "SampleQualityNDB", "TopLayerMetrics", "TrainingSpeed"]
